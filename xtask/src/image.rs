//! `cargo xtask image`: the container image, `FROM scratch` with one static
//! `dnsfast`, built with buildah and no base image.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{cached_target, cargo, run};

/// The release build for the image: outside the clone, so that CI's fresh
/// clones rebuild only dnsfast's own crates (see `cached_target`).
const CACHE: &str = "/var/cache/dnsfast-image";
/// The image's name; the tag is the crate version.
pub const NAME: &str = "localhost/dnsfast";

/// Builds the static, stripped release binary and lays out the build
/// context (`target/image`: the binary and the Containerfile).
pub fn context(root: &Path) -> Result<PathBuf> {
    let target = cached_target(CACHE, "target");
    run(cargo()
        .args(["build", "--release", "-p", "dnsfast"])
        .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
        .arg(&target)
        // glibc linked in: the image has no libc to load.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true"))?;
    let bin = target.join("x86_64-unknown-linux-gnu/release/dnsfast");
    let dir = root.join("target/image");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::copy(&bin, dir.join("dnsfast"))
        .with_context(|| format!("copying {}", bin.display()))?;
    std::fs::copy(root.join("Containerfile"), dir.join("Containerfile"))
        .context("copying the Containerfile")?;
    Ok(dir)
}

pub fn image(root: &Path) -> Result<()> {
    let dir = context(root)?;
    let tag = format!("{NAME}:{}", env!("CARGO_PKG_VERSION"));
    run(std::process::Command::new("buildah")
        .args(["bud", "--layers=false", "-f", "Containerfile", "-t", &tag])
        .arg(&dir))?;
    let out = std::process::Command::new("buildah")
        .args(["images", "--noheading", "--format", "{{.Size}}", &tag])
        .output()
        .context("asking buildah for the image size")?;
    println!(
        "image {tag}: {} (one static binary, FROM scratch)",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(())
}
