//! The Zerobus protocol, generated from Databricks' `zerobus_service.proto`: the messages,
//! the server the emulator runs and the client tests drive it with.

#[allow(unreachable_pub, clippy::all, clippy::pedantic)]
pub mod zerobus {
    tonic::include_proto!("databricks.zerobus");
}
