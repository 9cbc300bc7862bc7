//! Compiles every `bpf/*.bpf.c` into OUT_DIR with libbpf-cargo and generates its
//! skeleton there (never into `src/`). CO-RE: vmlinux.h comes from `bpf/`.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const OBJECTS: &[&str] = &["kestrel", "feature_probe"];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf_dir = manifest_dir.join("../../bpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let include = format!("-I{}", bpf_dir.display());

    for name in OBJECTS {
        let source = bpf_dir.join(format!("{name}.bpf.c"));
        let object = out_dir.join(format!("{name}.bpf.o"));
        let skeleton = out_dir.join(format!("{name}.skel.rs"));
        if let Err(err) = SkeletonBuilder::new()
            .source(&source)
            .obj(&object)
            .clang_args([include.as_str(), "-Wall", "-Wno-unused-function", "-Werror"])
            .build_and_generate(&skeleton)
        {
            // A build script can only report by panicking; say what to install.
            panic!(
                "compiling {} failed: {err:#}\nKestrel's BPF programs need clang (>= 11) and bpftool-generated \
                 bpf/vmlinux.h; on Debian/Ubuntu: apt-get install clang llvm libelf-dev zlib1g-dev pkg-config make",
                source.display()
            );
        }
        println!("cargo:rerun-if-changed={}", source.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        bpf_dir.join("kestrel.h").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        bpf_dir.join("vmlinux.h").display()
    );
}
