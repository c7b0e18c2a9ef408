pub mod resolve;
pub mod secret;
