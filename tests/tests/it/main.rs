//! Black-box tests against real `vltava-node` processes. One module per scenario.

mod admin;
mod admin_console;
mod backpressure;
mod bad_input;
mod cli;
mod daemon;
mod groups;
mod produce_consume;
mod producer_ids;
mod python_example;
mod resources;
mod restart;
mod spec;

/// A multi-threaded runtime for a test's client side.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
