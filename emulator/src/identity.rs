//! Whose a token is: the identity a call runs as.

use std::fmt;

/// The identity behind a token the emulator accepts, as its token store knows it. It
/// names the identity, never the token, so it is safe to print.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenOwner {
    /// A service principal, by its application (client) id: OAuth tokens from the
    /// client-credentials grant.
    ServicePrincipal(String),
    /// A user, by email: OAuth tokens from [`crate::Emulator::user_token`], standing in
    /// for Databricks' user sign-in (U2M).
    User(String),
    /// A personal access token from the configuration; whose it is, is not modelled.
    PersonalAccessToken,
}

impl TokenOwner {
    /// The user's email or the service principal's application id; `None` for a PAT.
    pub fn name(&self) -> Option<&str> {
        match self {
            TokenOwner::ServicePrincipal(id) => Some(id),
            TokenOwner::User(email) => Some(email),
            TokenOwner::PersonalAccessToken => None,
        }
    }
}

impl fmt::Display for TokenOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenOwner::ServicePrincipal(id) => write!(f, "service principal {id}"),
            TokenOwner::User(email) => write!(f, "user {email}"),
            TokenOwner::PersonalAccessToken => f.write_str("a personal access token"),
        }
    }
}
