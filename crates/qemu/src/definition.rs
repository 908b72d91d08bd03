//! The VM definition: what to run (JSON, serde), and its validation.
//!
//! A definition names everything QEMU needs that belongs to the VM: its size, its disks (NBD
//! exports of the agent's disk server, or local image files for tests), its NICs and where its
//! serial console goes. Host choices (the QEMU binary, KVM or TCG, where the QMP socket lives)
//! are [`crate::StartOptions`]. [`VmDefinition::validate`] checks everything that can be checked
//! without touching the host and names the field and what to do; [`crate::start`] checks the
//! rest (directories that must exist) before QEMU runs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The longest unix socket path the kernel accepts (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Most vCPUs the `pc` machine takes.
pub const MAX_VCPUS: u32 = 255;
/// Least memory SeaBIOS and a tiny guest need, in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Most memory accepted, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Most disks per VM.
pub const MAX_DISKS: usize = 16;
/// IDE disks the `pc` machine has slots for (2 buses x master/slave).
pub const MAX_IDE_DISKS: usize = 4;
/// Most NICs per VM.
pub const MAX_NICS: usize = 8;
/// The longest kernel command line x86 Linux takes (`COMMAND_LINE_SIZE` less its NUL).
pub const MAX_KERNEL_APPEND: usize = 2047;
/// The NBD protocol's limit on export names.
pub const MAX_EXPORT_NAME: usize = 4096;

/// A VM as Lifeboat runs it (one QEMU process).
///
/// ```
/// let def = lifeboat_qemu::VmDefinition::from_json(r#"{
///   "name": "web-1", "vcpus": 2, "memory_mib": 1024,
///   "disks": [{"source": {"nbd": {"socket": "/run/lifeboat/web-1.sock", "export": "disk0"}}}],
///   "nics": [{"network": {"user": {"restrict": true}}}],
///   "serial_log": "/var/log/lifeboat/web-1.serial"
/// }"#).unwrap();
/// assert_eq!(def.disks.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    /// The VM's name: `[A-Za-z0-9._-]{1,64}`, starting with a letter or digit.
    pub name: String,
    /// Virtual CPUs (1 ..= 255).
    pub vcpus: u32,
    /// Memory in MiB (16 ..= 1 TiB).
    pub memory_mib: u64,
    /// Disks, in boot order: the first one boots.
    pub disks: Vec<Disk>,
    /// NICs; none when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    /// The file the first serial port (COM1) is written to (created or truncated at start).
    pub serial_log: PathBuf,
    /// A unix socket QEMU listens on for the QEMU guest agent (virtio-serial port
    /// `org.qemu.guest_agent.0`), for filesystem freeze. None: no guest agent channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent_socket: Option<PathBuf>,
    /// Direct kernel boot (QEMU's `-kernel/-initrd/-append`) instead of booting the first disk
    /// through the BIOS. None: the BIOS boots the first disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelBoot>,
}

/// A Linux kernel QEMU loads itself (test guests, appliances without a boot loader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelBoot {
    /// The kernel image (`vmlinuz`, bzImage).
    pub kernel: PathBuf,
    /// The initial RAM disk; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line (e.g. `console=ttyS0`); may be empty.
    #[serde(default)]
    pub append: String,
}

/// One disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Where its bytes are.
    pub source: DiskSource,
    /// How the guest sees it.
    #[serde(default)]
    pub bus: DiskBus,
}

/// Where a disk's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DiskSource {
    /// An NBD export on a unix socket: how protected VMs reach the agent's disk server.
    Nbd {
        /// The disk server's socket.
        socket: PathBuf,
        /// The export name (empty: the server's default export).
        #[serde(default)]
        export: String,
    },
    /// A local image file (tests, and VMs that are not protected).
    File {
        /// The image.
        path: PathBuf,
        /// Its format.
        format: ImageFormat,
    },
}

/// Image file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    /// Raw bytes.
    Raw,
    /// QEMU's qcow2.
    Qcow2,
}

/// The bus a disk is attached to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskBus {
    /// IDE (`ide-hd` on the `pc` machine's PIIX controller): any BIOS and OS boots from it.
    #[default]
    Ide,
    /// virtio-blk (`virtio-blk-pci`): faster; the guest needs a virtio driver.
    Virtio,
}

/// One NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// The network it is plugged into.
    pub network: Network,
    /// The emulated device.
    #[serde(default)]
    pub model: NicModel,
    /// Its MAC address (`52:54:00:xx:xx:xx`); QEMU picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Networks a NIC can be plugged into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Network {
    /// QEMU user networking (slirp): outbound NAT, no inbound, no root needed.
    User {
        /// `restrict=on`: the guest reaches nothing outside (isolated network for DR drills).
        #[serde(default)]
        restrict: bool,
    },
}

/// NIC device models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicModel {
    /// `virtio-net-pci`.
    #[default]
    VirtioNetPci,
    /// `e1000` (guests without virtio drivers).
    E1000,
}

impl NicModel {
    /// QEMU's device name.
    pub fn qemu_device(self) -> &'static str {
        match self {
            NicModel::VirtioNetPci => "virtio-net-pci",
            NicModel::E1000 => "e1000",
        }
    }
}

/// A definition that cannot be used, with the field and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// Not JSON, or not the shape of a definition (unknown or missing field, wrong type).
    #[error("VM definition is not valid: {message} (line {line}, column {column})")]
    Parse {
        /// serde's message (names the field).
        message: String,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
    },
    /// The definition file could not be read.
    #[error("reading VM definition {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A field's value is not usable.
    #[error("VM definition {vm:?}: `{field}` {problem}")]
    Invalid {
        /// The VM's name as given.
        vm: String,
        /// The field, as a path (`disks[1].source.nbd.socket`).
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

impl VmDefinition {
    /// Parses and validates a JSON definition.
    pub fn from_json(json: &str) -> Result<Self, DefinitionError> {
        let def: VmDefinition = serde_json::from_str(json).map_err(|e| DefinitionError::Parse {
            message: e.to_string(),
            line: e.line(),
            column: e.column(),
        })?;
        def.validate()?;
        Ok(def)
    }

    /// Reads, parses and validates a JSON definition file.
    pub fn from_file(path: &Path) -> Result<Self, DefinitionError> {
        let json = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&json)
    }

    /// The definition as pretty JSON.
    pub fn to_json(&self) -> String {
        // A VmDefinition has only strings, numbers, paths and enums: serialization cannot fail
        // unless a path is not UTF-8, which `validate` refuses; fall back to the lossy form.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Checks every field that can be checked without touching the host.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let bad = |field: &str, problem: String| DefinitionError::Invalid {
            vm: self.name.clone(),
            field: field.to_owned(),
            problem,
        };
        check_name(&self.name).map_err(|p| bad("name", p))?;
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(bad(
                "vcpus",
                format!("is {}: give 1 to {MAX_VCPUS} virtual CPUs", self.vcpus),
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(bad(
                "memory_mib",
                format!(
                    "is {} MiB: give {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB",
                    self.memory_mib
                ),
            ));
        }
        if self.disks.is_empty() {
            return Err(bad(
                "disks",
                "is empty: add the boot disk (the first disk boots)".into(),
            ));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(bad(
                "disks",
                format!("has {} disks: at most {MAX_DISKS}", self.disks.len()),
            ));
        }
        let ide = self.disks.iter().filter(|d| d.bus == DiskBus::Ide).count();
        if ide > MAX_IDE_DISKS {
            return Err(bad(
                "disks",
                format!(
                    "has {ide} IDE disks but the pc machine has {MAX_IDE_DISKS} IDE slots: put the others on \"bus\": \"virtio\""
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, disk) in self.disks.iter().enumerate() {
            match &disk.source {
                DiskSource::Nbd { socket, export } => {
                    let field = format!("disks[{i}].source.nbd.socket");
                    check_socket_path(socket).map_err(|p| bad(&field, p))?;
                    if export.len() > MAX_EXPORT_NAME || export.contains('\0') {
                        return Err(bad(
                            &format!("disks[{i}].source.nbd.export"),
                            format!("must be at most {MAX_EXPORT_NAME} bytes without NUL: use the name the disk server serves the disk as"),
                        ));
                    }
                    if !seen.insert(format!("nbd:{}#{export}", socket.display())) {
                        return Err(bad(
                            &format!("disks[{i}]"),
                            format!("attaches export {export:?} of {} a second time: each disk must be attached once", socket.display()),
                        ));
                    }
                }
                DiskSource::File { path, .. } => {
                    let field = format!("disks[{i}].source.file.path");
                    check_path(path).map_err(|p| bad(&field, p))?;
                    if !seen.insert(format!("file:{}", path.display())) {
                        return Err(bad(
                            &format!("disks[{i}]"),
                            format!(
                                "attaches {} a second time: each disk must be attached once",
                                path.display()
                            ),
                        ));
                    }
                }
            }
        }
        if self.nics.len() > MAX_NICS {
            return Err(bad(
                "nics",
                format!("has {} NICs: at most {MAX_NICS}", self.nics.len()),
            ));
        }
        let mut macs = HashSet::new();
        for (i, nic) in self.nics.iter().enumerate() {
            if let Some(mac) = &nic.mac {
                let field = format!("nics[{i}].mac");
                check_mac(mac).map_err(|p| bad(&field, p))?;
                if !macs.insert(mac.to_ascii_lowercase()) {
                    return Err(bad(
                        &field,
                        format!("{mac} is used by another NIC: give each NIC its own MAC"),
                    ));
                }
            }
        }
        check_path(&self.serial_log).map_err(|p| bad("serial_log", p))?;
        if seen.contains(&format!("file:{}", self.serial_log.display())) {
            return Err(bad(
                "serial_log",
                "is one of the VM's disks: write the serial log to its own file".into(),
            ));
        }
        if let Some(sock) = &self.guest_agent_socket {
            check_socket_path(sock).map_err(|p| bad("guest_agent_socket", p))?;
        }
        if let Some(k) = &self.kernel {
            check_path(&k.kernel).map_err(|p| bad("kernel.kernel", p))?;
            if let Some(initrd) = &k.initrd {
                check_path(initrd).map_err(|p| bad("kernel.initrd", p))?;
            }
            if k.append.len() > MAX_KERNEL_APPEND {
                return Err(bad(
                    "kernel.append",
                    format!(
                        "is {} bytes long: Linux takes at most {MAX_KERNEL_APPEND}",
                        k.append.len()
                    ),
                ));
            }
            if k.append.chars().any(|c| c.is_control()) {
                return Err(bad(
                    "kernel.append",
                    "contains control characters (a newline?): write the command line on one line"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

/// `[A-Za-z0-9._-]{1,64}`, starting with a letter or digit (so it is a safe file name and QEMU
/// option value).
fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "is {} characters long: use 1 to 64 characters",
            name.len()
        ));
    }
    if !name.chars().all(ok_char) {
        return Err(format!(
            "{name:?} has characters other than letters, digits, '.', '_' and '-': rename the VM"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "{name:?} must start with a letter or a digit: rename the VM"
        ));
    }
    Ok(())
}

/// An absolute UTF-8 path without control characters (QEMU resolves relative paths from its
/// own working directory, and option values are text).
fn check_path(path: &Path) -> Result<(), String> {
    let Some(s) = path.to_str() else {
        return Err(format!(
            "{} is not valid UTF-8: use a UTF-8 path",
            path.display()
        ));
    };
    if s.is_empty() {
        return Err("is empty: give an absolute path".into());
    }
    if !path.is_absolute() {
        return Err(format!(
            "{s:?} is relative: give an absolute path (QEMU would resolve it from its own working directory)"
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{s:?} contains control characters: use a plain path"
        ));
    }
    Ok(())
}

/// A path usable as a unix socket address.
pub(crate) fn check_socket_path(path: &Path) -> Result<(), String> {
    check_path(path)?;
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "{} is {len} bytes long but unix socket paths can have at most {MAX_SOCKET_PATH}: use a shorter directory",
            path.display()
        ));
    }
    Ok(())
}

/// `xx:xx:xx:xx:xx:xx`, unicast, not all zero.
fn check_mac(mac: &str) -> Result<(), String> {
    let octets: Vec<&str> = mac.split(':').collect();
    let parsed: Option<Vec<u8>> = (octets.len() == 6)
        .then(|| {
            octets
                .iter()
                .map(|o| {
                    if o.len() == 2 {
                        u8::from_str_radix(o, 16).ok()
                    } else {
                        None
                    }
                })
                .collect()
        })
        .flatten();
    let Some(bytes) = parsed else {
        return Err(format!(
            "{mac:?} is not a MAC address: write six hex octets like 52:54:00:12:34:56"
        ));
    };
    if bytes[0] & 1 == 1 {
        return Err(format!(
            "{mac} is a multicast address: use a unicast one (even first octet), e.g. 52:54:00:..."
        ));
    }
    if bytes.iter().all(|&b| b == 0) {
        return Err("is all zero: use a real address, e.g. 52:54:00:12:34:56".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmDefinition {
        VmDefinition {
            name: "vm-1".into(),
            vcpus: 1,
            memory_mib: 64,
            disks: vec![Disk {
                source: DiskSource::Nbd {
                    socket: "/run/lb/vm-1.sock".into(),
                    export: "disk0".into(),
                },
                bus: DiskBus::Ide,
            }],
            nics: vec![],
            serial_log: "/tmp/vm-1.serial".into(),
            guest_agent_socket: None,
            kernel: None,
        }
    }

    fn invalid(def: &VmDefinition) -> (String, String) {
        match def.validate() {
            Err(DefinitionError::Invalid { field, problem, .. }) => (field, problem),
            other => panic!("expected an invalid definition, got {other:?}"),
        }
    }

    #[test]
    fn json_round_trip() {
        let mut def = sample();
        def.disks.push(Disk {
            source: DiskSource::File {
                path: "/img/data.qcow2".into(),
                format: ImageFormat::Qcow2,
            },
            bus: DiskBus::Virtio,
        });
        def.nics.push(Nic {
            network: Network::User { restrict: true },
            model: NicModel::E1000,
            mac: Some("52:54:00:12:34:56".into()),
        });
        def.guest_agent_socket = Some("/run/lb/vm-1.qga".into());
        def.kernel = Some(KernelBoot {
            kernel: "/boot/vmlinuz".into(),
            initrd: Some("/boot/initrd.img".into()),
            append: "console=ttyS0 quiet".into(),
        });
        let json = def.to_json();
        assert!(json.contains("\"restrict\": true"), "{json}");
        assert!(json.contains("\"model\": \"e1000\""), "{json}");
        assert_eq!(VmDefinition::from_json(&json).unwrap(), def);
    }

    #[test]
    fn defaults_apply() {
        let def = VmDefinition::from_json(
            r#"{"name":"a","vcpus":1,"memory_mib":16,"serial_log":"/s",
               "disks":[{"source":{"file":{"path":"/d.raw","format":"raw"}}}],
               "nics":[{"network":{"user":{}}}]}"#,
        )
        .unwrap();
        assert_eq!(def.disks[0].bus, DiskBus::Ide);
        assert_eq!(def.nics[0].network, Network::User { restrict: false });
        assert_eq!(def.nics[0].model, NicModel::VirtioNetPci);
        assert_eq!(def.kernel, None);
        assert!(!def.to_json().contains("kernel"), "{}", def.to_json());
        let def = VmDefinition::from_json(
            r#"{"name":"a","vcpus":1,"memory_mib":16,"serial_log":"/s",
               "disks":[{"source":{"file":{"path":"/d.raw","format":"raw"}}}],
               "kernel":{"kernel":"/k"}}"#,
        )
        .unwrap();
        let k = def.kernel.unwrap();
        assert_eq!((k.initrd, k.append.as_str()), (None, ""));
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = VmDefinition::from_json(r#"{"name":"a","vcpus":1,"memroy_mib":16}"#).unwrap_err();
        assert!(e.to_string().contains("memroy_mib"), "{e}");
        let e = VmDefinition::from_json(r#"{"name":"a","vcpus":"two"}"#).unwrap_err();
        assert!(matches!(e, DefinitionError::Parse { line: 1, .. }), "{e}");
        let e = VmDefinition::from_json("[").unwrap_err();
        assert!(matches!(e, DefinitionError::Parse { .. }), "{e}");
    }

    #[test]
    fn validation_names_field_and_remedy() {
        let mut d = sample();
        d.name = "bad name".into();
        assert_eq!(invalid(&d).0, "name");
        d.name = "-x".into();
        assert!(invalid(&d).1.contains("start with"));

        let mut d = sample();
        d.vcpus = 0;
        assert_eq!(invalid(&d).0, "vcpus");
        let mut d = sample();
        d.memory_mib = 4;
        let (f, p) = invalid(&d);
        assert_eq!(f, "memory_mib");
        assert!(p.contains("16"), "{p}");

        let mut d = sample();
        d.disks.clear();
        assert!(invalid(&d).1.contains("boot disk"));

        let mut d = sample();
        d.disks[0].source = DiskSource::Nbd {
            socket: format!("/{}", "s".repeat(120)).into(),
            export: String::new(),
        };
        let (f, p) = invalid(&d);
        assert_eq!(f, "disks[0].source.nbd.socket");
        assert!(p.contains("shorter directory"), "{p}");

        let mut d = sample();
        d.disks[0].source = DiskSource::File {
            path: "disk.raw".into(),
            format: ImageFormat::Raw,
        };
        let (f, p) = invalid(&d);
        assert_eq!(f, "disks[0].source.file.path");
        assert!(p.contains("absolute"), "{p}");

        let mut d = sample();
        d.disks.push(d.disks[0].clone());
        assert!(invalid(&d).1.contains("second time"));

        let mut d = sample();
        for i in 0..4 {
            d.disks.push(Disk {
                source: DiskSource::File {
                    path: format!("/d{i}.raw").into(),
                    format: ImageFormat::Raw,
                },
                bus: DiskBus::Ide,
            });
        }
        assert!(invalid(&d).1.contains("virtio"));

        let mut d = sample();
        d.nics.push(Nic {
            network: Network::User { restrict: false },
            model: NicModel::VirtioNetPci,
            mac: Some("01:00:5e:00:00:01".into()),
        });
        let (f, p) = invalid(&d);
        assert_eq!(f, "nics[0].mac");
        assert!(p.contains("multicast"), "{p}");
        d.nics[0].mac = Some("52:54:00:zz:00:01".into());
        assert!(invalid(&d).1.contains("six hex octets"));

        let mut d = sample();
        d.serial_log = "".into();
        assert_eq!(invalid(&d).0, "serial_log");

        let mut d = sample();
        d.guest_agent_socket = Some("qga.sock".into());
        assert_eq!(invalid(&d).0, "guest_agent_socket");

        let mut d = sample();
        d.kernel = Some(KernelBoot {
            kernel: "vmlinuz".into(),
            initrd: None,
            append: String::new(),
        });
        assert_eq!(invalid(&d).0, "kernel.kernel");
        d.kernel = Some(KernelBoot {
            kernel: "/vmlinuz".into(),
            initrd: Some("initrd".into()),
            append: String::new(),
        });
        assert_eq!(invalid(&d).0, "kernel.initrd");
        d.kernel = Some(KernelBoot {
            kernel: "/vmlinuz".into(),
            initrd: None,
            append: "console=ttyS0\ninit=/x".into(),
        });
        assert!(invalid(&d).1.contains("one line"));
        d.kernel = Some(KernelBoot {
            kernel: "/vmlinuz".into(),
            initrd: None,
            append: "x".repeat(3000),
        });
        assert!(invalid(&d).1.contains("2047"));

        assert!(sample().validate().is_ok());
    }

    #[test]
    fn error_display_names_vm_field_and_remedy() {
        let mut d = sample();
        d.vcpus = 300;
        let msg = d.validate().unwrap_err().to_string();
        assert_eq!(
            msg,
            "VM definition \"vm-1\": `vcpus` is 300: give 1 to 255 virtual CPUs"
        );
    }
}
