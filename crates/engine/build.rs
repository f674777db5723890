//! Compiles `src/guard.c` (see `src/guard.rs`).

fn main() {
    println!("cargo:rerun-if-changed=src/guard.c");
    cc::Build::new()
        .file("src/guard.c")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("los_guard");
}
