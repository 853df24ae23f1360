//! The Databricks DDL that sqlparser cannot read: `CREATE TABLE` with Delta clauses and
//! `CREATE CATALOG`. Clauses that only matter to Delta (USING, CLUSTER BY, PARTITIONED BY,
//! COMMENT, TBLPROPERTIES, OPTIONS, LOCATION) are parsed and ignored.

use datafusion::sql::sqlparser::ast::{ColumnDef, ObjectName, Query};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{IsOptional, Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

pub(super) enum Ddl {
    CreateTable(CreateTable),
    CreateCatalog {
        name: ObjectName,
        if_not_exists: bool,
    },
}

pub(super) struct CreateTable {
    pub name: ObjectName,
    pub or_replace: bool,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnDef>,
    /// `CREATE TABLE ... AS <query>`
    pub query: Option<Box<Query>>,
}

/// Parses `sql` when it is one of the statements handled here; `Ok(None)` otherwise.
pub(super) fn parse(sql: &str) -> Result<Option<Ddl>, ParserError> {
    let mut parser = Parser::new(&super::dialect::Databricks).try_with_sql(sql)?;
    if !parser.parse_keyword(Keyword::CREATE) {
        return Ok(None);
    }
    let or_replace = parser.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
    let ddl = if parser.parse_keyword(Keyword::TABLE) {
        Ddl::CreateTable(create_table(&mut parser, or_replace)?)
    } else if parser.parse_keyword(Keyword::CATALOG) {
        let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = parser.parse_object_name(false)?;
        if parser.parse_keyword(Keyword::COMMENT) {
            parser.parse_literal_string()?;
        }
        Ddl::CreateCatalog {
            name,
            if_not_exists,
        }
    } else {
        return Ok(None);
    };
    let _ = parser.consume_token(&Token::SemiColon);
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return parser.expected("end of statement", next);
    }
    Ok(Some(ddl))
}

fn create_table(parser: &mut Parser, or_replace: bool) -> Result<CreateTable, ParserError> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    let columns = if parser.peek_token().token == Token::LParen {
        parser.parse_columns()?.0
    } else {
        Vec::new()
    };
    loop {
        if parser.parse_keyword(Keyword::USING) {
            parser.parse_identifier()?;
        } else if parser.parse_keywords(&[Keyword::CLUSTER, Keyword::BY]) {
            if parser
                .parse_one_of_keywords(&[Keyword::AUTO, Keyword::NONE])
                .is_none()
            {
                parser.parse_parenthesized_column_list(IsOptional::Mandatory, false)?;
            }
        } else if parser.parse_keywords(&[Keyword::PARTITIONED, Keyword::BY])
            || parser
                .parse_one_of_keywords(&[Keyword::TBLPROPERTIES, Keyword::OPTIONS])
                .is_some()
        {
            skip_parenthesized(parser)?;
        } else if parser
            .parse_one_of_keywords(&[Keyword::COMMENT, Keyword::LOCATION])
            .is_some()
        {
            parser.parse_literal_string()?;
        } else {
            break;
        }
    }
    let query = if parser.parse_keyword(Keyword::AS) {
        Some(parser.parse_query()?)
    } else {
        None
    };
    if columns.is_empty() && query.is_none() {
        return parser.expected("a column list or AS query", parser.peek_token());
    }
    Ok(CreateTable {
        name,
        or_replace,
        if_not_exists,
        columns,
        query,
    })
}

/// Skips a balanced `( ... )` group whose content is of no interest here.
fn skip_parenthesized(parser: &mut Parser) -> Result<(), ParserError> {
    parser.expect_token(&Token::LParen)?;
    let mut depth = 1;
    while depth > 0 {
        let token = parser.next_token();
        match token.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::EOF => return parser.expected(")", token),
            _ => {}
        }
    }
    Ok(())
}
