//! `image:`: a rootfs name or path, the mapping `{ kernel, rootfs }` for
//! prebuilt images, or an image spec `{ base | oci, packages, files, setup, size }` that the
//! runner builds (see `pipeline/image_spec.rs`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::super::error::{located, suggest};
use super::super::image_spec::{
    parse_image_size, parse_image_target, parse_package, ImageSpec, SpecBase, SpecFile, SPEC_BASES,
};
use super::super::scalars::{parse_image_ref, resolve_host_path, ImageKind, ImageRef};
use super::super::Image;
use super::fields::{next_key, non_empty, parse_value, Parse};

/// `image: minimal` (a rootfs with the default kernel),
/// `image: { kernel: …, rootfs: … }`, or an image spec
/// (`image: { base: debian, packages: [gcc] }`, below).
pub(crate) struct ImageSeed<'a> {
    pub workspace: &'a Path,
    pub context: &'a str,
}

impl<'de> DeserializeSeed<'de> for ImageSeed<'_> {
    type Value = Image;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Image, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ImageSeed<'_> {
    type Value = Image;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a rootfs name or path, or a mapping with `kernel` and `rootfs` or an image spec (`base`, `packages`, …)")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Image, E> {
        let rootfs = parse_image_ref(ImageKind::Rootfs, text, self.workspace).map_err(located)?;
        Ok(Image {
            rootfs,
            ..Image::default()
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Image, A::Error> {
        visit_image_map(map, self.workspace, self.context)
    }
}

const KEYS: &[&str] = &[
    "kernel", "rootfs", "base", "oci", "packages", "files", "setup", "size",
];
/// Keys that make the mapping an image spec.
const SPEC_KEYS: &[&str] = &["base", "oci", "packages", "files", "setup", "size"];
const EXCLUSIVE: &[(&str, &str)] = &[
    ("rootfs", "base"),
    ("rootfs", "oci"),
    ("base", "oci"),
    ("rootfs", "packages"),
    ("rootfs", "files"),
    ("rootfs", "setup"),
    ("rootfs", "size"),
    ("oci", "packages"),
];

fn visit_image_map<'de, A: MapAccess<'de>>(
    mut map: A,
    workspace: &Path,
    context: &str,
) -> Result<Image, A::Error> {
    let context = if context.is_empty() {
        "in `image`".to_string()
    } else {
        format!("in `image` {context}")
    };
    let mut seen = Vec::new();
    let mut image = Image::default();
    let mut base = None;
    let mut spec = ImageSpec {
        base: SpecBase::Minimal,
        packages: Vec::new(),
        files: Vec::new(),
        setup: None,
        size_mib: None,
    };
    while let Some(key) = next_key(&mut map, KEYS, &context, &mut seen, EXCLUSIVE)? {
        match key {
            "kernel" | "rootfs" => {
                let kind = if key == "kernel" {
                    ImageKind::Kernel
                } else {
                    ImageKind::Rootfs
                };
                let what = format!("a {} name or path", kind.noun());
                let image_ref = parse_value(&mut map, &what, &|text: &str| {
                    parse_image_ref(kind, text, workspace)
                })?;
                match kind {
                    ImageKind::Kernel => image.kernel = image_ref,
                    ImageKind::Rootfs => image.rootfs = image_ref,
                }
            }
            "base" => base = Some(parse_value(&mut map, "an image base", &parse_base)?),
            "oci" => {
                let text = parse_value(&mut map, "a host path", &non_empty("`oci`".into()))?;
                base = Some(SpecBase::Oci(resolve_host_path(text.trim(), workspace)));
            }
            "packages" => spec.packages = map.next_value_seed(PackagesSeed)?,
            "files" => spec.files = map.next_value_seed(SpecFilesSeed { workspace })?,
            "setup" => {
                spec.setup = Some(parse_value(
                    &mut map,
                    "a shell script",
                    &non_empty("`setup`".into()),
                )?)
            }
            _ => spec.size_mib = Some(parse_value(&mut map, "a size", &parse_image_size)?),
        }
    }
    if !seen.iter().any(|key| SPEC_KEYS.contains(key)) {
        return Ok(image);
    }
    let Some(base) = base else {
        return Err(located(format!(
            "an image spec needs `base: minimal|debian` or `oci: PATH` {context}"
        )));
    };
    if !spec.packages.is_empty() && base != SpecBase::Debian {
        return Err(located(format!(
            "`packages` need `base: debian` {context} (the other bases have no package manager)"
        )));
    }
    spec.base = base;
    image.rootfs = ImageRef::Spec(Arc::new(spec));
    Ok(image)
}

fn parse_base(text: &str) -> Result<SpecBase, String> {
    match text.trim() {
        "minimal" => Ok(SpecBase::Minimal),
        "debian" => Ok(SpecBase::Debian),
        other => {
            let hint = suggest(other, SPEC_BASES)
                .map(|name| format!(" (did you mean `{name}`?)"))
                .unwrap_or_default();
            Err(format!(
                "unknown image base `{other}`{hint}: known bases are {}; for a container image use `oci: PATH`",
                SPEC_BASES.join(", ")
            ))
        }
    }
}

/// `packages: [gcc, make]`, each name checked where it stands.
struct PackagesSeed;

impl<'de> DeserializeSeed<'de> for PackagesSeed {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PackagesSeed {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of Debian package names")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut packages = Vec::new();
        while let Some(name) = seq.next_element_seed(Parse {
            what: "a package name",
            parse: &parse_package,
        })? {
            packages.push(name);
        }
        Ok(packages)
    }
}

/// `files: [{ from: host/path, to: /guest/path }, …]` of an image spec.
struct SpecFilesSeed<'a> {
    workspace: &'a Path,
}

impl<'de> DeserializeSeed<'de> for SpecFilesSeed<'_> {
    type Value = Vec<SpecFile>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SpecFilesSeed<'_> {
    type Value = Vec<SpecFile>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of `{ from, to }` mappings")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut files = Vec::new();
        while let Some(file) = seq.next_element_seed(SpecFileSeed {
            workspace: self.workspace,
        })? {
            files.push(file);
        }
        Ok(files)
    }
}

struct SpecFileSeed<'a> {
    workspace: &'a Path,
}

impl<'de> DeserializeSeed<'de> for SpecFileSeed<'_> {
    type Value = SpecFile;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SpecFile, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SpecFileSeed<'_> {
    type Value = SpecFile;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping with `from` (host path) and `to` (absolute path in the image)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpecFile, A::Error> {
        const FILE_KEYS: &[&str] = &["from", "to"];
        let context = "in an image `files` entry";
        let mut seen = Vec::new();
        let (mut from, mut to) = (None, None);
        while let Some(key) = next_key(&mut map, FILE_KEYS, context, &mut seen, &[])? {
            if key == "from" {
                let text = parse_value(&mut map, "a host path", &non_empty("`from`".into()))?;
                from = Some(resolve_host_path(text.trim(), self.workspace));
            } else {
                to = Some(map.next_value_seed(Parse {
                    what: "an absolute path in the image",
                    parse: &parse_image_target,
                })?);
            }
        }
        match (from, to) {
            (Some(from), Some(to)) => Ok(SpecFile { from, to }),
            (None, _) => Err(located(format!("missing `from` {context}"))),
            (_, None) => Err(located(format!("missing `to` {context}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::pipeline::{ImageRef, Pipeline, SpecBase};

    fn parse(text: &str) -> Result<Pipeline, String> {
        Pipeline::parse(text, Path::new("p.yml"), Path::new("/repo")).map_err(|e| e.to_string())
    }

    #[test]
    fn spec_at_top_level_and_per_job() {
        let p = parse(
            "image:\n  base: debian\n  packages: [gcc, make]\n  files: [{ from: ci/x.sh, to: /usr/local/bin/x }]\n  setup: |\n    echo hi\n  size: 2G\njobs:\n  a: { steps: [true] }\n  b:\n    image: { oci: img/layout }\n    steps: [true]\n  c:\n    image: minimal\n    steps: [true]\n",
        )
        .unwrap();
        let ImageRef::Spec(spec) = &p.image.rootfs else {
            panic!("{:?}", p.image.rootfs)
        };
        assert_eq!(spec.base, SpecBase::Debian);
        assert_eq!(spec.packages, ["gcc", "make"]);
        assert_eq!(spec.files[0].from, Path::new("/repo/ci/x.sh"));
        assert_eq!(spec.files[0].to, "/usr/local/bin/x");
        assert_eq!(spec.setup.as_deref(), Some("echo hi\n"));
        assert_eq!(spec.size_mib, Some(2048));
        let ImageRef::Spec(oci) = &p.jobs[1].image.as_ref().unwrap().rootfs else {
            panic!()
        };
        assert_eq!(oci.base, SpecBase::Oci("/repo/img/layout".into()));
        assert_eq!(
            p.jobs[2].image.as_ref().unwrap().rootfs,
            ImageRef::Named("minimal".into())
        );
    }

    #[test]
    fn spec_errors_are_located() {
        let cases = [
            (
                "image:\n  base: debian\n  packages: [gcc]\n  setpu: x\n",
                "p.yml:4:3: unknown key `setpu` in `image` (did you mean `setup`?)",
            ),
            (
                "image:\n  base: ubuntu\n",
                "p.yml:2:9: unknown image base `ubuntu`",
            ),
            (
                "image:\n  base: minimal\n  packages: [gcc]\n",
                "`packages` need `base: debian`",
            ),
            (
                "image:\n  packages: [gcc]\n",
                "an image spec needs `base: minimal|debian` or `oci: PATH`",
            ),
            (
                "image:\n  base: debian\n  packages: [GCC]\n",
                "p.yml:3:14: invalid package name `GCC`",
            ),
            (
                "image:\n  base: debian\n  files: [{ from: a, to: b }]\n",
                "p.yml:3:26: invalid image path `b`",
            ),
            (
                "image:\n  base: debian\n  files: [{ from: a }]\n",
                "missing `to`",
            ),
            (
                "image:\n  base: debian\n  size: lots\n",
                "p.yml:3:9: invalid image size `lots`",
            ),
            (
                "image:\n  rootfs: minimal\n  base: debian\n",
                "p.yml:3:3: `base` and `rootfs` cannot both be set",
            ),
        ];
        for (text, expected) in cases {
            let full = format!("{text}jobs:\n  a: {{ steps: [true] }}\n");
            let err = parse(&full).unwrap_err();
            assert!(
                err.contains(expected),
                "{text:?}\n got: {err}\nwant: {expected}"
            );
            assert!(err.starts_with("p.yml:"), "{err}");
        }
    }
}
