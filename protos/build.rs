//! Compiles `proto/icu/v1/icu.proto` with protox (pure Rust), so no system `protoc` is needed.
fn main() {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["icu/v1/icu.proto"], ["proto"]).expect("icu.proto does not compile");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost code generation failed");
}
