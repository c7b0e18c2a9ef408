pub mod can_i;
pub mod controller;
pub mod crd;
pub mod keygen;
pub mod resolve;
pub mod secret;
pub mod serve;
