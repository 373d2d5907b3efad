"""The generated ``NAME.rs``: rustfmt-clean, a module or an ``include!``, beside kvm-bindings.

Compiled with the ``rustc`` that ``proc.program`` finds (Debian 12's, 1.63, from
``scripts/setup --test``) with ``-D warnings``, in the three ways a rust-vmm project
uses such a file: as a module, pasted in by ``include!`` (inner ``//!`` comments or
``#![...]`` attributes there are E0753), and glob-imported beside kvm-bindings (a name
both define is E0659 at its first use).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import EXAMPLES, SLOW, run

from pvdesc import kvm
from pvdesc.core.model import Vmm
from pvdesc.emit import build
from pvdesc.tools import proc

RUST_HINT = "apt-get install rustc (scripts/setup --test)"
GENERIC = sorted(
    p.name
    for p in EXAMPLES.glob("*.yaml")
    if "vmm:" not in p.read_text() or "vmm: generic-kvm" in p.read_text()
)

#: How kvm-bindings (bindgen over arch/arm64/include/uapi/asm/kvm.h) declares what the
#: generated file is used with: names and types as bindgen writes them.
KVM_BINDINGS_STANDIN = f"""
#[allow(non_camel_case_types)]
pub mod kvm_bindings {{
    pub const KVM_ARM_VCPU_PVTIME_CTRL: u32 = {kvm.KVM_ARM_VCPU_PVTIME_CTRL};
    pub const KVM_ARM_VCPU_PVTIME_IPA: u32 = {kvm.KVM_ARM_VCPU_PVTIME_IPA};
    pub struct kvm_device_attr {{
        pub flags: u32,
        pub group: u32,
        pub attr: u64,
        pub addr: u64,
    }}
    pub struct kvm_userspace_memory_region {{
        pub slot: u32,
        pub flags: u32,
        pub guest_phys_addr: u64,
        pub memory_size: u64,
        pub userspace_addr: u64,
    }}
}}
"""


def rustc(*args: str) -> None:
    res = run([proc.program("rustc", RUST_HINT), "--edition", "2021", *args], timeout=SLOW)
    assert res.returncode == 0, res.stderr


def _build(tmp_path: Path, example: str) -> tuple[Path, dict[str, object]]:
    result = build.build(EXAMPLES / example, tmp_path / "out")
    assert result.layout.description.vmm is Vmm.GENERIC_KVM
    name = result.layout.description.name
    config = json.loads((tmp_path / "out" / f"{name}.hypervisor.json").read_text())
    return tmp_path / "out" / f"{name}.rs", config


def test_every_generic_example_is_covered() -> None:
    assert {"generic-hole.yaml", "single-vcpu.yaml", "max-vcpus-512.yaml"} <= set(GENERIC)


@pytest.mark.parametrize("example", GENERIC)
def test_rustfmt_leaves_it_as_it_is(tmp_path: Path, example: str) -> None:
    mod, _ = _build(tmp_path, example)
    res = run(
        [proc.program("rustfmt", "apt-get install rustfmt (scripts/setup --test)"),
         "--edition", "2021", "--check", str(mod)]
    )  # fmt: skip
    assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr


@pytest.mark.parametrize("example", ["generic-hole.yaml", "single-vcpu.yaml", "numa-2node.yaml"])
def test_module_and_include_compile_beside_kvm_bindings(tmp_path: Path, example: str) -> None:
    mod, config = _build(tmp_path, example)
    text = mod.read_text()
    assert "//!" not in text and "#![" not in text  # what include! refuses (E0753)
    lib = tmp_path / "lib.rs"
    lib.write_text(
        f"{KVM_BINDINGS_STANDIN}\n"
        f"#[path = {json.dumps(str(mod))}]\npub mod as_module;\n"
        f"pub mod included {{\n    include!({json.dumps(str(mod))});\n}}\n"
        "pub mod vmm {\n"
        "    // Both glob-imported, as a VMM does: no name may be defined twice (E0659).\n"
        "    use super::as_module::*;\n"
        "    use super::kvm_bindings::*;\n"
        "    pub fn pvtime_attr(vcpu_id: usize, ipa: &u64) -> Option<kvm_device_attr> {\n"
        "        assert_eq!(pvtime_ipa(vcpu_id), Some(*ipa));\n"
        "        Some(kvm_device_attr {\n"
        "            flags: 0,\n"
        "            group: KVM_ARM_VCPU_PVTIME_CTRL,\n"
        "            attr: u64::from(KVM_ARM_VCPU_PVTIME_IPA),\n"
        "            addr: ipa as *const u64 as u64,\n"
        "        })\n"
        "    }\n"
        "    pub fn regions() -> Vec<kvm_userspace_memory_region> {\n"
        "        MEMSLOTS.iter().map(|m| kvm_userspace_memory_region {\n"
        "            slot: m.slot,\n"
        "            flags: 0,\n"
        "            guest_phys_addr: m.guest_phys_addr,\n"
        "            memory_size: m.memory_size,\n"
        "            userspace_addr: 0,\n"
        "        }).collect()\n"
        "    }\n"
        "    pub fn same_abi() -> bool {\n"
        "        kvm_abi::KVM_ARM_VCPU_PVTIME_CTRL == KVM_ARM_VCPU_PVTIME_CTRL\n"
        "            && kvm_abi::KVM_ARM_VCPU_PVTIME_IPA == KVM_ARM_VCPU_PVTIME_IPA\n"
        "    }\n"
        "}\n"
    )
    rustc("--crate-type", "lib", "-D", "warnings", str(lib), "-o", str(tmp_path / "liblayout.rlib"))
    # its own unit test, warning-free too
    rustc("--test", "-D", "warnings", str(mod), "-o", str(tmp_path / "unit"))
    res = run([str(tmp_path / "unit")])
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout
    # the values, through both ways in, are the hypervisor config's
    main = tmp_path / "main.rs"
    main.write_text(
        f"{KVM_BINDINGS_STANDIN}\n"
        f"#[allow(dead_code)]\n#[path = {json.dumps(str(mod))}]\nmod as_module;\n"
        f"#[allow(dead_code)]\nmod included {{\n    include!({json.dumps(str(mod))});\n}}\n"
        "fn main() {\n"
        "    for id in 0..as_module::MAX_VCPUS {\n"
        "        assert_eq!(as_module::PVTIME_IPAS[id], included::PVTIME_IPAS[id]);\n"
        '        println!("{} {:#x}", id, included::pvtime_ipa(id).unwrap());\n'
        "    }\n"
        "    for m in as_module::MEMSLOTS.iter() {\n"
        '        println!("slot {} {:#x} {:#x}", m.slot, m.guest_phys_addr, m.memory_size);\n'
        "    }\n"
        "}\n"
    )
    rustc("-D", "warnings", "-A", "dead_code", str(main), "-o", str(tmp_path / "m"))
    res = run([str(tmp_path / "m")])
    assert res.returncode == 0, res.stderr
    vcpus = config["vcpus"]
    slots = config["memslots"]
    assert isinstance(vcpus, list) and isinstance(slots, list)
    expected = [f"{v['id']} {v['pvtime_ipa']:#x}" for v in vcpus]
    expected += [f"slot {s['slot']} {s['guest_phys_addr']:#x} {s['memory_size']:#x}" for s in slots]
    assert res.stdout.splitlines() == expected


def test_rust_hex_groups_digits_in_fours() -> None:
    from pvdesc.emit.templating import rust_hex

    assert rust_hex(0x4000_0000) == "0x4000_0000"
    assert rust_hex(0x1_0000) == "0x1_0000"
    assert rust_hex(0xC500_0021) == "0xc500_0021"
    assert rust_hex(0x1_0000, 16) == "0x0000_0000_0001_0000"
    assert rust_hex((1 << 64) - 1, 16) == "0xffff_ffff_ffff_ffff"
    for value in (0, 1, 0xFFFF, 0x1_0000, 0x80_0000_0040, (1 << 52) - 64):
        text = rust_hex(value, 16)
        assert len(text) == 21 and int(text.replace("_", ""), 16) == value
