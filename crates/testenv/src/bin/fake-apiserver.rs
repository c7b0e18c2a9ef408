//! The fake API server as a process of its own (for benchmarks that measure
//! a controller's memory without the server's): prints its URL, then serves
//! until killed. Write counts are at `GET /fake/writes`.

use pullbroker_testenv::fakeapi::FakeApi;
use pullbroker_testenv::issuer::{TestIssuer, KUBE_ISSUER};

fn main() {
    let fake = FakeApi::start(TestIssuer::rsa(KUBE_ISSUER));
    println!("{}", fake.url);
    loop {
        std::thread::park();
    }
}
