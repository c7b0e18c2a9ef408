pub mod can_i;
pub mod crd;
pub mod keygen;
pub mod resolve;
pub mod secret;
pub mod serve;
