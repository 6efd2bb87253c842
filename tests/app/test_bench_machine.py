"""Every benchmark says which machine gave its numbers."""

from __future__ import annotations

import torch

from app.bench.machine import cpu_model, machine, machine_phrase


def test_the_cpu_model_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Example CPU @ 2.00GHz\n\nprocessor\t: 1\n")
    assert cpu_model(cpuinfo) == "Example CPU @ 2.00GHz"


def test_without_cpuinfo_the_platform_names_the_processor(tmp_path):
    assert cpu_model(tmp_path / "missing") not in ("", None)


def test_the_machine_record_names_what_torch_dispatches_to():
    info = machine()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["gpu"] is None or isinstance(info["gpu"], str)
    assert machine_phrase({"machine": info}).startswith(f"{info['cpu']} ({info['cpu_capability']}, ")


def test_a_run_recorded_before_machines_were_says_so():
    assert machine_phrase({}) == "machine not recorded"
