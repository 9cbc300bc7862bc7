//! Builds the table of an ELF file and writes its on-disk form (fuzz seeds,
//! inspection): `cargo run -p kestrel-unwind --example table_bytes ELF OUT`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, elf, out] = args.as_slice() else {
        return Err("usage: table_bytes ELF OUT".into());
    };
    let built = kestrel_unwind::build(&std::fs::read(elf)?)?;
    std::fs::write(out, built.table.to_bytes())?;
    eprintln!("{:?}, {} B", built.stats, built.table.bytes());
    Ok(())
}
