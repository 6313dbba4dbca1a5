//! Compiles `proto/` with protox, so building needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "proto/baton/v1/instance.proto",
            "proto/baton/v1/shard.proto",
        ],
        ["proto"],
    )?;
    prost_build::Config::new()
        // Maps encode in key order, so equal states give equal bytes.
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
