//! The `disk-reserve` command line (placeholder until the CLI lands).
fn main() {}
