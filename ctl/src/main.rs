//! `tailopsctl`: the TailOps admin CLI.

mod cli;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tailops_pki::install_crypto_provider();
    match cli::run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::describe(&e));
            ExitCode::FAILURE
        }
    }
}
