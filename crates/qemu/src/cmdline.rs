//! The QEMU command line of a [`VmDefinition`] (pure: no I/O, unit-tested).
//!
//! Option spelling is QEMU 7.2's (Debian bookworm) and is kept to options that newer QEMU
//! still accepts: `-blockdev`/`-device` pairs (no `-drive`), `server=on,wait=off`, `-accel`.
//! Every value that comes from the definition is escaped for QEMU's option parser (a `,` is
//! written `,,`); [`VmDefinition::validate`] has already refused control characters.

use std::path::Path;

use crate::definition::{DiskBus, DiskSource, ImageFormat, Network, VmDefinition};

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelKind {
    /// Hardware virtualization (`/dev/kvm`).
    Kvm,
    /// QEMU's emulator: works everywhere, slower.
    Tcg,
}

impl AccelKind {
    /// QEMU's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            AccelKind::Kvm => "kvm",
            AccelKind::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for AccelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The chardev id of the QMP monitor.
pub const QMP_CHARDEV: &str = "qmp";
/// The chardev id of COM1.
pub const SERIAL_CHARDEV: &str = "serial0";
/// The chardev id of the guest agent channel.
pub const QGA_CHARDEV: &str = "qga0";
/// The virtio-serial port name the QEMU guest agent opens in the guest.
pub const QGA_PORT_NAME: &str = "org.qemu.guest_agent.0";

/// `s` as a QEMU option value: commas doubled.
pub fn escape(s: &str) -> String {
    s.replace(',', ",,")
}

fn esc_path(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

/// The block node name of disk `i`.
pub fn disk_node(i: usize) -> String {
    format!("disk{i}")
}

/// QEMU's arguments (without the program) for `def`, with the QMP monitor on `qmp_socket`.
///
/// The VM starts paused (`-S`): the driver connects QMP first and then sends `cont`, so no
/// event of the guest's life is missed.
pub fn qemu_args(def: &VmDefinition, accel: AccelKind, qmp_socket: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["-no-user-config", "-nodefaults", "-S"]
        .map(String::from)
        .to_vec();
    let mut push = |k: &str, v: String| {
        a.push(k.to_owned());
        a.push(v);
    };
    push("-name", format!("guest={}", escape(&def.name)));
    push("-machine", "pc".into());
    push("-accel", accel.as_str().into());
    push("-smp", def.vcpus.to_string());
    push("-m", format!("{}M", def.memory_mib));
    push("-display", "none".into());
    push(
        "-chardev",
        format!(
            "socket,id={QMP_CHARDEV},path={},server=on,wait=off",
            esc_path(qmp_socket)
        ),
    );
    push("-mon", format!("chardev={QMP_CHARDEV},mode=control"));
    push(
        "-chardev",
        format!(
            "file,id={SERIAL_CHARDEV},path={}",
            esc_path(&def.serial_log)
        ),
    );
    push("-device", format!("isa-serial,chardev={SERIAL_CHARDEV}"));

    let mut ide_slot = 0usize;
    // A direct kernel boot's option ROM takes boot index 0: the disks follow it.
    let first_boot_index = usize::from(def.kernel.is_some());
    for (i, disk) in def.disks.iter().enumerate() {
        let boot = first_boot_index + i;
        let node = disk_node(i);
        let blockdev = match &disk.source {
            DiskSource::Nbd { socket, export } => {
                let mut s = format!(
                    "driver=nbd,node-name={node},server.type=unix,server.path={},cache.direct=off,discard=unmap",
                    esc_path(socket)
                );
                if !export.is_empty() {
                    s.push_str(&format!(",export={}", escape(export)));
                }
                s
            }
            DiskSource::File { path, format } => {
                let driver = match format {
                    ImageFormat::Raw => "raw",
                    ImageFormat::Qcow2 => "qcow2",
                };
                format!(
                    "driver={driver},node-name={node},file.driver=file,file.filename={},discard=unmap",
                    esc_path(path)
                )
            }
        };
        push("-blockdev", blockdev);
        let device = match disk.bus {
            DiskBus::Ide => {
                let (bus, unit) = (ide_slot / 2, ide_slot % 2);
                ide_slot += 1;
                format!("ide-hd,drive={node},bus=ide.{bus},unit={unit},bootindex={boot}")
            }
            DiskBus::Virtio => format!("virtio-blk-pci,drive={node},bootindex={boot}"),
        };
        push("-device", device);
    }

    if def.nics.is_empty() {
        push("-nic", "none".into());
    }
    for (j, nic) in def.nics.iter().enumerate() {
        let id = format!("net{j}");
        match &nic.network {
            Network::User { restrict } => {
                let mut s = format!("user,id={id}");
                if *restrict {
                    s.push_str(",restrict=on");
                }
                push("-netdev", s);
            }
        }
        let mut dev = format!("{},netdev={id}", nic.model.qemu_device());
        if let Some(mac) = &nic.mac {
            dev.push_str(&format!(",mac={}", escape(mac)));
        }
        push("-device", dev);
    }

    if let Some(k) = &def.kernel {
        push("-kernel", k.kernel.to_string_lossy().into_owned());
        if let Some(initrd) = &k.initrd {
            push("-initrd", initrd.to_string_lossy().into_owned());
        }
        push("-append", k.append.clone());
    }

    if let Some(qga) = &def.guest_agent_socket {
        push(
            "-chardev",
            format!(
                "socket,id={QGA_CHARDEV},path={},server=on,wait=off",
                esc_path(qga)
            ),
        );
        push("-device", "virtio-serial-pci,id=vser0".into());
        push(
            "-device",
            format!("virtserialport,bus=vser0.0,chardev={QGA_CHARDEV},name={QGA_PORT_NAME}"),
        );
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Disk, Nic, NicModel};

    fn def() -> VmDefinition {
        VmDefinition {
            name: "vm-1".into(),
            vcpus: 2,
            memory_mib: 128,
            disks: vec![
                Disk {
                    source: DiskSource::Nbd {
                        socket: "/run/a,b.sock".into(),
                        export: "disk0".into(),
                    },
                    bus: DiskBus::Ide,
                },
                Disk {
                    source: DiskSource::File {
                        path: "/img/d1.qcow2".into(),
                        format: ImageFormat::Qcow2,
                    },
                    bus: DiskBus::Virtio,
                },
                Disk {
                    source: DiskSource::Nbd {
                        socket: "/run/b.sock".into(),
                        export: String::new(),
                    },
                    bus: DiskBus::Ide,
                },
            ],
            nics: vec![],
            serial_log: "/logs/vm-1.serial".into(),
            guest_agent_socket: None,
            kernel: None,
        }
    }

    /// The value following each occurrence of option `k`.
    fn values<'a>(args: &'a [String], k: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == k)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn disks_are_blockdev_device_pairs_in_boot_order() {
        let args = qemu_args(&def(), AccelKind::Kvm, Path::new("/run/vm-1/qmp.sock"));
        assert_eq!(
            values(&args, "-blockdev"),
            [
                "driver=nbd,node-name=disk0,server.type=unix,server.path=/run/a,,b.sock,cache.direct=off,discard=unmap,export=disk0",
                "driver=qcow2,node-name=disk1,file.driver=file,file.filename=/img/d1.qcow2,discard=unmap",
                "driver=nbd,node-name=disk2,server.type=unix,server.path=/run/b.sock,cache.direct=off,discard=unmap",
            ]
        );
        let devices = values(&args, "-device");
        assert!(devices.contains(&"ide-hd,drive=disk0,bus=ide.0,unit=0,bootindex=0"));
        assert!(devices.contains(&"virtio-blk-pci,drive=disk1,bootindex=1"));
        assert!(devices.contains(&"ide-hd,drive=disk2,bus=ide.0,unit=1,bootindex=2"));
    }

    #[test]
    fn machine_monitor_and_serial() {
        let args = qemu_args(&def(), AccelKind::Tcg, Path::new("/run/vm-1/qmp.sock"));
        for flag in ["-no-user-config", "-nodefaults", "-S"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        assert_eq!(values(&args, "-accel"), ["tcg"]);
        assert_eq!(values(&args, "-smp"), ["2"]);
        assert_eq!(values(&args, "-m"), ["128M"]);
        assert_eq!(values(&args, "-display"), ["none"]);
        assert_eq!(values(&args, "-nic"), ["none"]);
        assert_eq!(
            values(&args, "-chardev"),
            [
                "socket,id=qmp,path=/run/vm-1/qmp.sock,server=on,wait=off",
                "file,id=serial0,path=/logs/vm-1.serial",
            ]
        );
        assert_eq!(values(&args, "-mon"), ["chardev=qmp,mode=control"]);
        assert!(values(&args, "-device").contains(&"isa-serial,chardev=serial0"));
    }

    #[test]
    fn nics_and_guest_agent() {
        let mut d = def();
        d.nics = vec![
            Nic {
                network: Network::User { restrict: true },
                model: NicModel::VirtioNetPci,
                mac: Some("52:54:00:00:00:01".into()),
            },
            Nic {
                network: Network::User { restrict: false },
                model: NicModel::E1000,
                mac: None,
            },
        ];
        d.guest_agent_socket = Some("/run/vm-1/qga.sock".into());
        let args = qemu_args(&d, AccelKind::Kvm, Path::new("/q.sock"));
        assert!(values(&args, "-nic").is_empty());
        assert_eq!(
            values(&args, "-netdev"),
            ["user,id=net0,restrict=on", "user,id=net1"]
        );
        let devices = values(&args, "-device");
        assert!(devices.contains(&"virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01"));
        assert!(devices.contains(&"e1000,netdev=net1"));
        assert!(devices
            .contains(&"virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"));
        assert!(values(&args, "-chardev")
            .contains(&"socket,id=qga0,path=/run/vm-1/qga.sock,server=on,wait=off"));
    }

    #[test]
    fn kernel_boot() {
        let args = qemu_args(&def(), AccelKind::Kvm, Path::new("/q.sock"));
        for k in ["-kernel", "-initrd", "-append"] {
            assert!(
                values(&args, k).is_empty(),
                "{k} without a kernel: {args:?}"
            );
        }
        let mut d = def();
        d.kernel = Some(crate::definition::KernelBoot {
            kernel: "/boot/a,b/vmlinuz".into(),
            initrd: None,
            append: "console=ttyS0 x=a,b".into(),
        });
        let args = qemu_args(&d, AccelKind::Kvm, Path::new("/q.sock"));
        // -kernel/-initrd/-append take a plain string, not an option list: no comma doubling
        assert_eq!(values(&args, "-kernel"), ["/boot/a,b/vmlinuz"]);
        assert!(values(&args, "-initrd").is_empty());
        assert_eq!(values(&args, "-append"), ["console=ttyS0 x=a,b"]);
        // The kernel's option ROM has boot index 0 (QEMU refuses a second one).
        let devices = values(&args, "-device");
        assert!(devices.contains(&"ide-hd,drive=disk0,bus=ide.0,unit=0,bootindex=1"));
        assert!(devices.contains(&"virtio-blk-pci,drive=disk1,bootindex=2"));
        d.kernel = Some(crate::definition::KernelBoot {
            kernel: "/vmlinuz".into(),
            initrd: Some("/initrd.img".into()),
            append: String::new(),
        });
        let args = qemu_args(&d, AccelKind::Kvm, Path::new("/q.sock"));
        assert_eq!(values(&args, "-initrd"), ["/initrd.img"]);
        assert_eq!(values(&args, "-append"), [""]);
    }
}
