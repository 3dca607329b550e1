//! Rust drivers through pgward: `pgward-compat-rust tokio-postgres|sqlx`.
//! Connection settings come from the PG* variables compat/run.sh exports;
//! prints `<check> ok|FAIL: why` lines like every compat program.

mod sqlx_checks;
mod tokio_pg;

use std::future::Future;

/// Runs checks in order and counts failures.
pub struct Checks {
    failed: usize,
}

pub type Res = Result<(), Box<dyn std::error::Error + Send + Sync>>;

impl Checks {
    pub async fn run<F: Future<Output = Res>>(&mut self, name: &str, check: F) {
        match check.await {
            Ok(()) => println!("{name} ok"),
            Err(e) => {
                // tokio-postgres' Display is just "db error": add the sources.
                let mut why = e.to_string();
                let mut source = e.source();
                while let Some(s) = source {
                    why.push_str(&format!(": {s}"));
                    source = s.source();
                }
                self.fail(name, &why)
            }
        }
    }

    pub fn fail(&mut self, name: &str, why: &str) {
        self.failed += 1;
        let why: String = why.split_whitespace().collect::<Vec<_>>().join(" ");
        println!("{name} FAIL: {}", why.chars().take(300).collect::<String>());
    }
}

pub fn expect(cond: bool, what: impl Into<String>) -> Res {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

pub const COPY_ROWS: &str = "100\tcopied 100\n101\tcopied 101\n102\tcopied 102\n";

#[tokio::main]
async fn main() {
    let mut checks = Checks { failed: 0 };
    match std::env::args().nth(1).as_deref() {
        Some("tokio-postgres") => tokio_pg::run(&mut checks).await,
        Some("sqlx") => sqlx_checks::run(&mut checks).await,
        other => {
            eprintln!("usage: pgward-compat-rust tokio-postgres|sqlx (got {other:?})");
            std::process::exit(2);
        }
    }
    std::process::exit(if checks.failed == 0 { 0 } else { 1 });
}
