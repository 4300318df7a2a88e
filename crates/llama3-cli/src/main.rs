//! `llama3`: run, chat with and inspect Llama-family models. The command line lives in the
//! library (`llama3_cli::run`), which the Python wheel runs in-process too.

fn main() {
    std::process::exit(llama3_cli::run(std::env::args_os().collect()));
}
