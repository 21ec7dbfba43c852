//! `geo-demo`: writes edgeward's demo geo database, `config/geo/demo.mmdb`.
//!
//! Regenerate it (from anywhere in the repository) with
//!
//! ```sh
//! cargo run -p geo-demo                 # writes config/geo/demo.mmdb
//! cargo run -p geo-demo -- out.mmdb     # or any other path
//! ```
//!
//! The output is byte-for-byte reproducible (a fixed build time, a fixed order), so
//! regenerating it changes nothing unless this file changed; a unit test fails when the
//! committed file is out of date.
//!
//! The database is a MaxMind DB (format 2.0) with `database_type` `edgeward-Demo-City`, an
//! IPv6 search tree holding the IPv4 ranges both where MaxMind readers look IPv4 addresses up
//! (`::a.b.c.d`, the first 96 bits zero) and at their IPv4-mapped addresses
//! (`::ffff:a.b.c.d`). It maps only documentation ranges (RFC 5737, RFC 3849), so it never
//! says anything about a real address. Each record carries the fields of MaxMind's City and
//! ASN databases at once: `continent.code`, `continent.names.en`, `country.iso_code`,
//! `country.names.en`, `subdivisions[0].iso_code`, `city.names.en`, `location.latitude`,
//! `location.longitude`, `autonomous_system_number` and `autonomous_system_organization`.
//! See [`DEMO`] for the contents.

use std::ffi::OsString;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use maxminddb_writer::metadata::IpVersion;
use maxminddb_writer::paths::IpAddrWithMask;
use maxminddb_writer::Database;
use serde::Serialize;

/// The database type written in the metadata.
const DATABASE_TYPE: &str = "edgeward-Demo-City";

/// The build time written in the metadata (2026-11-24T00:00:00Z): fixed, so that the output
/// is reproducible.
const BUILD_EPOCH: u64 = 1_795_478_400;

const DESCRIPTION: &str =
    "edgeward demo geo database: documentation address ranges only (RFC 5737, RFC 3849)";

const USAGE: &str = "usage: geo-demo [OUTPUT]   (default: config/geo/demo.mmdb of the repository)";

/// One network of the demo database and what it maps to.
#[derive(Clone, Copy, Debug)]
pub struct Network {
    /// The network in CIDR notation.
    pub cidr: &'static str,
    pub country: &'static str,
    pub country_name: &'static str,
    pub continent: &'static str,
    pub continent_name: &'static str,
    /// The ISO 3166-2 subdivision code, without the country part.
    pub region: &'static str,
    pub city: &'static str,
    pub latitude: f64,
    pub longitude: f64,
    pub asn: u32,
    pub as_org: &'static str,
}

/// The demo database's contents. ASNs are from the private-use/documentation range
/// (RFC 5398: 64496–64511).
pub const DEMO: &[Network] = &[
    Network {
        cidr: "192.0.2.0/24",
        country: "JP",
        country_name: "Japan",
        continent: "AS",
        continent_name: "Asia",
        region: "13",
        city: "Tokyo",
        latitude: 35.6895,
        longitude: 139.6917,
        asn: 64500,
        as_org: "Edgeward Demo JP",
    },
    Network {
        cidr: "198.51.100.0/24",
        country: "DE",
        country_name: "Germany",
        continent: "EU",
        continent_name: "Europe",
        region: "BE",
        city: "Berlin",
        latitude: 52.52,
        longitude: 13.405,
        asn: 64501,
        as_org: "Edgeward Demo DE",
    },
    Network {
        cidr: "203.0.113.0/24",
        country: "US",
        country_name: "United States",
        continent: "NA",
        continent_name: "North America",
        region: "CA",
        city: "San Francisco",
        latitude: 37.7749,
        longitude: -122.4194,
        asn: 64502,
        as_org: "Edgeward Demo US",
    },
    Network {
        cidr: "2001:db8::/33",
        country: "SG",
        country_name: "Singapore",
        continent: "AS",
        continent_name: "Asia",
        region: "01",
        city: "Singapore",
        latitude: 1.2897,
        longitude: 103.8501,
        asn: 64503,
        as_org: "Edgeward Demo SG",
    },
    Network {
        cidr: "2001:db8:8000::/33",
        country: "AU",
        country_name: "Australia",
        continent: "OC",
        continent_name: "Oceania",
        region: "NSW",
        city: "Sydney",
        latitude: -33.8688,
        longitude: 151.2093,
        asn: 64504,
        as_org: "Edgeward Demo AU",
    },
];

/// A record as MaxMind lays out City and ASN data (field order is the order written).
#[derive(Serialize)]
struct Record {
    continent: Continent,
    country: Country,
    subdivisions: [Subdivision; 1],
    city: City,
    location: Location,
    autonomous_system_number: u32,
    autonomous_system_organization: &'static str,
}

#[derive(Serialize)]
struct Continent {
    code: &'static str,
    names: Names,
}

#[derive(Serialize)]
struct Country {
    iso_code: &'static str,
    names: Names,
}

#[derive(Serialize)]
struct Subdivision {
    iso_code: &'static str,
}

#[derive(Serialize)]
struct City {
    names: Names,
}

#[derive(Serialize)]
struct Names {
    en: &'static str,
}

#[derive(Serialize)]
struct Location {
    latitude: f64,
    longitude: f64,
}

impl Network {
    fn record(&self) -> Record {
        Record {
            continent: Continent {
                code: self.continent,
                names: Names {
                    en: self.continent_name,
                },
            },
            country: Country {
                iso_code: self.country,
                names: Names {
                    en: self.country_name,
                },
            },
            subdivisions: [Subdivision {
                iso_code: self.region,
            }],
            city: City {
                names: Names { en: self.city },
            },
            location: Location {
                latitude: self.latitude,
                longitude: self.longitude,
            },
            autonomous_system_number: self.asn,
            autonomous_system_organization: self.as_org,
        }
    }

    /// Where the network goes in the IPv6 search tree: itself for an IPv6 network; for an
    /// IPv4 one, its place in the IPv4 subtree (`::a.b.c.d`, where readers look IPv4
    /// addresses up) and its IPv4-mapped form (`::ffff:a.b.c.d`).
    fn tree_paths(&self) -> anyhow::Result<Vec<IpAddrWithMask>> {
        let (addr, len) = parse_cidr(self.cidr)?;
        Ok(match addr {
            IpAddr::V4(v4) => vec![
                IpAddrWithMask::new(IpAddr::V6(v4.to_ipv6_compatible()), 96 + len),
                IpAddrWithMask::new(IpAddr::V6(v4.to_ipv6_mapped()), 96 + len),
            ],
            IpAddr::V6(v6) => vec![IpAddrWithMask::new(IpAddr::V6(v6), len)],
        })
    }
}

/// Parses `addr/len`, refusing a length too long for the address or host bits that are set.
fn parse_cidr(cidr: &str) -> anyhow::Result<(IpAddr, u8)> {
    let (addr, len) = cidr
        .split_once('/')
        .with_context(|| format!("`{cidr}` is not in CIDR notation (address/length)"))?;
    let addr: IpAddr = addr
        .parse()
        .with_context(|| format!("`{cidr}`: invalid address"))?;
    let len: u8 = len
        .parse()
        .with_context(|| format!("`{cidr}`: invalid prefix length"))?;
    let bits: u8 = if addr.is_ipv4() { 32 } else { 128 };
    if len > bits {
        bail!("`{cidr}`: prefix length over {bits}");
    }
    let as_u128 = match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
        IpAddr::V6(v6) => u128::from(v6),
    };
    if len < 128 && as_u128 << len != 0 {
        bail!("`{cidr}`: host bits are set (the network address is expected)");
    }
    Ok((addr, len))
}

/// Builds the demo database in memory.
pub fn build() -> anyhow::Result<Vec<u8>> {
    let mut db = Database::default();
    db.metadata.ip_version = IpVersion::V6;
    db.metadata.database_type = DATABASE_TYPE.to_owned();
    db.metadata.languages = vec!["en".to_owned()];
    db.metadata.binary_format_major_version = 2;
    db.metadata.binary_format_minor_version = 0;
    db.metadata.build_epoch = BUILD_EPOCH;
    db.metadata
        .description
        .insert("en".to_owned(), DESCRIPTION.to_owned());
    for network in DEMO {
        let data = db
            .insert_value(network.record())
            .with_context(|| format!("encoding the record of {}", network.cidr))?;
        for path in network.tree_paths()? {
            db.insert_node(path, data);
        }
    }
    db.write_to(Vec::new()).context("encoding the database")
}

/// The default output: `config/geo/demo.mmdb` of the repository this tool belongs to.
fn default_output() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // tools/geo-demo → the repository root.
    let root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest_dir);
    root.join("config").join("geo").join("demo.mmdb")
}

/// Writes `bytes` to `path` through a temporary file renamed into place, so that a reader
/// never sees half a database; creates the parent directory if needed.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
    fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    Write(PathBuf),
}

fn parse_args(args: &[OsString]) -> anyhow::Result<Command> {
    match args {
        [] => Ok(Command::Write(default_output())),
        [arg] if arg == "-h" || arg == "--help" => Ok(Command::Help),
        [arg] if arg.to_string_lossy().starts_with('-') => {
            bail!("unknown option `{}`\n{USAGE}", arg.to_string_lossy())
        }
        [path] => Ok(Command::Write(PathBuf::from(path))),
        _ => bail!("expected at most one argument, the output path\n{USAGE}"),
    }
}

fn run(args: &[OsString]) -> anyhow::Result<()> {
    let path = match parse_args(args)? {
        Command::Help => {
            println!("geo-demo: writes edgeward's demo MaxMind database\n{USAGE}");
            return Ok(());
        }
        Command::Write(path) => path,
    };
    let bytes = build()?;
    write_atomically(&path, &bytes)?;
    println!(
        "wrote {} ({} bytes, {DATABASE_TYPE}, {} networks)",
        path.display(),
        bytes.len(),
        DEMO.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("geo-demo: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use maxminddb::{geoip2, Reader};
    use serde::Deserialize;

    use super::*;

    /// The fields edgeward reads, through a serde struct of our own.
    #[derive(Debug, Deserialize, PartialEq)]
    struct Demo {
        country: DemoCountry,
        continent: DemoContinent,
        subdivisions: Vec<DemoSubdivision>,
        city: DemoCity,
        location: DemoLocation,
        autonomous_system_number: u32,
        autonomous_system_organization: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct DemoCountry {
        iso_code: String,
        names: DemoNames,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct DemoContinent {
        code: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct DemoSubdivision {
        iso_code: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct DemoCity {
        names: DemoNames,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct DemoNames {
        en: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct DemoLocation {
        latitude: f64,
        longitude: f64,
    }

    fn reader() -> Reader<Vec<u8>> {
        Reader::from_source(build().unwrap()).unwrap()
    }

    fn lookup(reader: &Reader<Vec<u8>>, ip: &str) -> Option<Demo> {
        let ip: IpAddr = ip.parse().unwrap();
        reader.lookup(ip).unwrap().decode::<Demo>().unwrap()
    }

    #[test]
    fn tokyo_for_192_0_2_1() {
        let reader = reader();
        let demo = lookup(&reader, "192.0.2.1").unwrap();
        assert_eq!(
            demo,
            Demo {
                country: DemoCountry {
                    iso_code: "JP".into(),
                    names: DemoNames { en: "Japan".into() },
                },
                continent: DemoContinent { code: "AS".into() },
                subdivisions: vec![DemoSubdivision {
                    iso_code: "13".into()
                }],
                city: DemoCity {
                    names: DemoNames { en: "Tokyo".into() },
                },
                location: DemoLocation {
                    latitude: 35.6895,
                    longitude: 139.6917,
                },
                autonomous_system_number: 64500,
                autonomous_system_organization: "Edgeward Demo JP".into(),
            }
        );
        let result = reader.lookup("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(result.network().unwrap().to_string(), "192.0.2.0/24");
    }

    #[test]
    fn sydney_for_2001_db8_8000_1() {
        let reader = reader();
        let demo = lookup(&reader, "2001:db8:8000::1").unwrap();
        assert_eq!(demo.country.iso_code, "AU");
        assert_eq!(demo.country.names.en, "Australia");
        assert_eq!(demo.continent.code, "OC");
        assert_eq!(demo.subdivisions[0].iso_code, "NSW");
        assert_eq!(demo.city.names.en, "Sydney");
        assert_eq!(demo.location.latitude, -33.8688);
        assert_eq!(demo.location.longitude, 151.2093);
        assert_eq!(demo.autonomous_system_number, 64504);
        assert_eq!(demo.autonomous_system_organization, "Edgeward Demo AU");
        let result = reader.lookup("2001:db8:8000::1".parse().unwrap()).unwrap();
        assert_eq!(result.network().unwrap().to_string(), "2001:db8:8000::/33");
    }

    #[test]
    fn every_network_reads_back_at_both_ends() {
        let reader = reader();
        let ends = [
            ("192.0.2.0", "192.0.2.255"),
            ("198.51.100.0", "198.51.100.255"),
            ("203.0.113.0", "203.0.113.255"),
            ("2001:db8::", "2001:db8:7fff:ffff:ffff:ffff:ffff:ffff"),
            ("2001:db8:8000::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
        ];
        assert_eq!(ends.len(), DEMO.len());
        for (network, (first, last)) in DEMO.iter().zip(ends) {
            for ip in [first, last] {
                let demo = lookup(&reader, ip).unwrap_or_else(|| panic!("{ip}: no data"));
                assert_eq!(demo.country.iso_code, network.country, "{ip}");
                assert_eq!(demo.continent.code, network.continent, "{ip}");
                assert_eq!(demo.subdivisions[0].iso_code, network.region, "{ip}");
                assert_eq!(demo.city.names.en, network.city, "{ip}");
                assert_eq!(demo.location.latitude, network.latitude, "{ip}");
                assert_eq!(demo.location.longitude, network.longitude, "{ip}");
                assert_eq!(demo.autonomous_system_number, network.asn, "{ip}");
                assert_eq!(demo.autonomous_system_organization, network.as_org, "{ip}");
            }
        }
    }

    #[test]
    fn ipv4_mapped_addresses_find_the_ipv4_networks() {
        let reader = reader();
        for (ip, country) in [
            ("::ffff:192.0.2.1", "JP"),
            ("::ffff:198.51.100.7", "DE"),
            ("::ffff:203.0.113.200", "US"),
            ("::192.0.2.1", "JP"),
        ] {
            let demo = lookup(&reader, ip).unwrap_or_else(|| panic!("{ip}: no data"));
            assert_eq!(demo.country.iso_code, country, "{ip}");
        }
    }

    #[test]
    fn other_addresses_have_no_data() {
        let reader = reader();
        for ip in [
            "192.0.3.1",
            "192.0.1.255",
            "198.51.101.0",
            "203.0.112.255",
            "10.0.0.1",
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::ffff:10.0.0.1",
            "2001:db9::1",
            "2001:db7:ffff::1",
            "2002:c000:201::1",
        ] {
            assert_eq!(lookup(&reader, ip), None, "{ip}");
        }
    }

    #[test]
    fn maxminds_own_layouts_read_it_too() {
        let reader = reader();
        let result = reader.lookup("198.51.100.1".parse().unwrap()).unwrap();
        let city: geoip2::City = result.decode().unwrap().unwrap();
        assert_eq!(city.country.iso_code, Some("DE"));
        assert_eq!(city.country.names.english, Some("Germany"));
        assert_eq!(city.continent.code, Some("EU"));
        assert_eq!(city.subdivisions[0].iso_code, Some("BE"));
        assert_eq!(city.city.names.english, Some("Berlin"));
        assert_eq!(city.location.latitude, Some(52.52));
        assert_eq!(city.location.longitude, Some(13.405));
        let asn: geoip2::Asn = result.decode().unwrap().unwrap();
        assert_eq!(asn.autonomous_system_number, Some(64501));
        assert_eq!(asn.autonomous_system_organization, Some("Edgeward Demo DE"));
    }

    #[test]
    fn metadata_and_structure_are_valid() {
        let reader = reader();
        reader.verify().unwrap();
        let metadata = reader.metadata();
        assert_eq!(metadata.database_type, "edgeward-Demo-City");
        assert_eq!(metadata.ip_version, 6);
        assert_eq!(metadata.binary_format_major_version, 2);
        assert_eq!(metadata.binary_format_minor_version, 0);
        assert_eq!(metadata.build_epoch, BUILD_EPOCH);
        assert_eq!(metadata.languages, ["en"]);
        assert_eq!(
            metadata.description.get("en").map(String::as_str),
            Some(DESCRIPTION)
        );
    }

    #[test]
    fn the_output_is_reproducible_and_the_committed_file_is_current() {
        let bytes = build().unwrap();
        assert_eq!(bytes, build().unwrap());
        let committed = fs::read(default_output()).unwrap_or_else(|err| {
            panic!(
                "{}: {err} (run `cargo run -p geo-demo`)",
                default_output().display()
            )
        });
        assert!(
            committed == bytes,
            "config/geo/demo.mmdb is out of date: run `cargo run -p geo-demo`"
        );
    }

    #[test]
    fn run_writes_the_given_path_creating_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/demo.mmdb");
        run(&[path.clone().into_os_string()]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), build().unwrap());
        assert!(!dir.path().join("sub/dir/demo.mmdb.tmp").exists());
        // Over an existing file too.
        run(&[path.clone().into_os_string()]).unwrap();
        let reader = Reader::open_readfile(&path).unwrap();
        assert_eq!(reader.metadata().database_type, DATABASE_TYPE);
    }

    #[test]
    fn a_write_failure_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        let err = run(&[blocker.join("demo.mmdb").into_os_string()]).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("creating the directory"), "{message}");
        assert!(
            message.contains(&blocker.display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn arguments() {
        assert_eq!(parse_args(&[]).unwrap(), Command::Write(default_output()));
        assert!(default_output().ends_with("config/geo/demo.mmdb"));
        assert!(!default_output().to_string_lossy().contains(".."));
        assert_eq!(parse_args(&["--help".into()]).unwrap(), Command::Help);
        assert_eq!(
            parse_args(&["x.mmdb".into()]).unwrap(),
            Command::Write(PathBuf::from("x.mmdb"))
        );
        let err = parse_args(&["--out".into()]).unwrap_err().to_string();
        assert!(err.contains("unknown option `--out`"), "{err}");
        let err = parse_args(&["a".into(), "b".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most one argument"), "{err}");
    }

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(
            parse_cidr("2001:db8:8000::/33").unwrap(),
            ("2001:db8:8000::".parse().unwrap(), 33)
        );
        assert!(parse_cidr("192.0.2.1/24").is_err());
        assert!(parse_cidr("192.0.2.0/33").is_err());
        assert!(parse_cidr("192.0.2.0").is_err());
        assert!(parse_cidr("2001:db8:8000::/32").is_err());
        for network in DEMO {
            parse_cidr(network.cidr).unwrap();
        }
    }
}
