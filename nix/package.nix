# Kestrel, built from this workspace with nixpkgs' Rust tooling.
#
# Called by the flake's overlay (`pkgs.kestrel`); nothing here is fetched: every
# crate comes from Cargo.lock (cargoLock.lockFile), sources from this repository.
{
  lib,
  rustPlatform,
  llvmPackages,
  runCommand,
  pkg-config,
  rustfmt,
  elfutils,
  zlib,
}:
let
  workspace = lib.importTOML ../Cargo.toml;

  # crates/probes/build.rs compiles bpf/*.bpf.c with libbpf-cargo's SkeletonBuilder,
  # which runs `clang` from PATH with `-target bpf` and Kestrel's `-Wall -Werror`.
  # nixpkgs' wrapped clang (cc-wrapper) cannot be used for that:
  #   - it adds the host's hardening flags; `-fzero-call-used-regs=used-gpr` is an
  #     error for the BPF target ("unsupported option ... for target 'bpf'", the
  #     failure nixpkgs fixed in bpftop and bpftune with hardeningDisable);
  #   - it adds `--gcc-toolchain=...`, `-B...` and `-fstack-clash-protection`, which
  #     clang reports as unused for `-target bpf`; under `-Werror` that is fatal, so
  #     `hardeningDisable = [ "zerocallusedregs" ]` alone would not be enough
  #     (reproduced with clang 14 by nix/check-offline.sh's BPF step);
  #   - it appends NIX_CFLAGS_COMPILE (host include paths) to every call.
  # The unwrapped clang sees exactly the flags build.rs gives it. It needs no
  # sysroot: the BPF sources include only bpf/vmlinux.h and libbpf's headers
  # (checked with `-nostdinc` and a missing resource dir in nix/check-offline.sh).
  # Only `clang` is exposed, so `cc`, `cpp` and the C compiler that builds the
  # vendored libbpf, zstd and ring stay stdenv's wrapped, hardened gcc.
  bpfClang = runCommand "kestrel-bpf-clang-${llvmPackages.clang-unwrapped.version}" { } ''
    mkdir -p $out/bin
    ln -s ${llvmPackages.clang-unwrapped}/bin/clang $out/bin/clang
  '';
in
rustPlatform.buildRustPackage {
  pname = "kestrel";
  inherit (workspace.workspace.package) version;

  # Only what the build reads: a change to docs or nix/ does not rebuild Kestrel.
  # Every workspace member must be present because cargo loads the whole
  # workspace, hence the VM rig (its sources include_str! files from guest/).
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../config.toml
      ../bpf
      ../crates
      ../vm-tests/Cargo.toml
      ../vm-tests/src
      (lib.fileset.maybeMissing ../vm-tests/guest)
      (lib.fileset.maybeMissing ../vm-tests/build.rs)
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The workspace has several binaries (kestrel, the VM rig); users get kestrel.
  cargoBuildFlags = [
    "--package"
    "kestrel"
  ];
  cargoTestFlags = [
    "--package"
    "kestrel"
  ];

  nativeBuildInputs = [
    bpfClang
    # libbpf-sys's vendored libbpf is built with make and finds libelf and zlib
    # through pkg-config.
    pkg-config
    # libbpf-cargo formats the generated skeletons with rustfmt when it is on
    # PATH (cosmetic: it skips formatting otherwise, but then compiler errors in
    # generated code are unreadable).
    rustfmt
  ];

  # libelf (from elfutils) and zlib: linked dynamically by the vendored libbpf.
  buildInputs = [
    elfutils
    zlib
  ];

  # Put the unwrapped clang first on PATH whatever stdenv is used: with clangStdenv
  # the wrapped clang would otherwise be found first and the BPF build would fail.
  preBuild = ''
    export PATH=${bpfClang}/bin:$PATH
  '';

  # Kestrel's tests load real BPF programs, open perf events and read other
  # processes' /proc entries: they need root (or CAP_BPF + CAP_PERFMON), a kernel
  # with BTF and a /proc the build sandbox does not provide. They run in the
  # repository's CI (.ci/run) and, for the packaged binary, in the NixOS VM tests
  # of nix/tests.nix (`nix flake check`).
  doCheck = false;

  # For the flake's development shell, which compiles the same BPF objects.
  passthru = { inherit bpfClang; };

  meta = {
    description = "Continuous eBPF profiler for Linux with bounded, explainable memory";
    longDescription = ''
      Kestrel samples on-CPU stacks and measures off-CPU time for every process
      with eBPF, symbolizes on the host, and exports OTLP Profiles, pprof, folded
      stacks and flamegraphs. Every BPF map is sized from the machine's online
      CPUs and the configured rates, under a fixed kernel memory cap.
    '';
    license = lib.licenses.asl20;
    mainProgram = "kestrel";
    # eBPF and perf events: Linux only. bpf/vmlinux.h is generated from an x86_64
    # kernel; CO-RE relocates field offsets by name at load time, and the BPF
    # objects compile for __TARGET_ARCH_arm64 too (checked offline), but Kestrel
    # has only been run on x86_64.
    platforms = [
      "x86_64-linux"
      "aarch64-linux"
    ];
  };
}
