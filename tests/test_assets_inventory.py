"""Asset inventory: vendors from the OUI registry, roles, attributes, the store and the CLI."""

import json

import pytest
from click.testing import CliRunner

from engine.assets import oui
from engine.assets.inventory import Inventory, observations_from, vendor_roles
from engine.cli import main
from engine.inspect.pipeline import iter_inspections
from engine.inspect.records import FlowInspection
from engine.store import open_store

OUI_SAMPLE = """OUI/MA-L                                                    Organization
00-0A-0B   (hex)\t\tBaxter International Inc
000A0B     (base 16)\t\tBaxter International Inc
\t\t\t\tOne Baxter Parkway

00-00-0C   (hex)\t\tCisco Systems, Inc
"""


def dicom_result(**fields) -> FlowInspection:
    return FlowInspection(
        flow_id=1, protocol="dicom", transport="tcp",
        initiator_ip="10.1.0.20", responder_ip="10.1.0.5", initiator_port=50000, responder_port=104,
        initiator_mac="00:0a:0b:00:00:01", responder_mac="", first_seen=100.0, last_seen=110.0,
        initiator_packets=5, responder_packets=5, initiator_bytes=500, responder_bytes=300,
        fields={"calling_ae": "CT01", "called_ae": "PACS1",
                "commands": [{"command": "C-STORE-RQ", "direction": 0}],
                "presentation_contexts": [{"sop_class": "CT Image Storage"}], **fields},
    )


def test_parse_oui_text_hex_lines_only():
    assert oui.parse_oui_text(OUI_SAMPLE.splitlines()) == {
        "000A0B": "Baxter International Inc",
        "00000C": "Cisco Systems, Inc",
    }


def test_vendor_lookup_from_given_registry(tmp_path):
    registry = tmp_path / "oui.txt"
    registry.write_text(OUI_SAMPLE)
    oui.load_vendors.cache_clear()
    assert oui.vendor_for_mac("00:0a:0b:12:34:56", str(registry)) == "Baxter International Inc"
    assert oui.vendor_for_mac("00-00-0C-12-34-56", str(registry)) == "Cisco Systems, Inc"
    assert oui.vendor_for_mac("02:00:00:00:00:01", str(registry)) == "(locally administered)"
    assert oui.vendor_for_mac("not a mac", str(registry)) == ""


def test_missing_registry_falls_back_to_medical_subset(tmp_path, caplog):
    oui.load_vendors.cache_clear()
    vendors, source = oui.load_vendors(str(tmp_path / "absent.txt"))
    assert source.endswith("oui_medical.tsv")
    assert "ieee-data" in caplog.text
    assert any("Baxter" in vendor for vendor in vendors.values())
    assert "Cisco" not in " ".join(vendors.values())


def test_debian_registry_names_cisco():
    if not oui.os.path.exists(oui.IEEE_OUI_PATH):
        pytest.skip("ieee-data is not installed")
    oui.load_vendors.cache_clear()
    assert oui.vendor_for_mac("00:00:0c:00:00:01") == "Cisco Systems, Inc"


def test_vendor_roles_for_pump_maker():
    assert vendor_roles("Baxter International Inc") == {"infusion_pump", "iomt_device"}
    assert vendor_roles("Cisco Systems, Inc") == set()


def test_dicom_observations_roles_and_titles():
    initiator, responder = observations_from(dicom_result())
    assert ("role", "modality") in initiator.attributes
    assert ("ae_title", "CT01") in initiator.attributes
    assert ("role", "pacs") in responder.attributes
    assert ("ae_title", "PACS1") in responder.attributes
    assert ("service", "dicom/tcp/104") in responder.attributes
    assert ("sop_class", "CT Image Storage") in responder.attributes


def test_inventory_incremental_update(tmp_path):
    registry = tmp_path / "oui.txt"
    registry.write_text(OUI_SAMPLE)
    conn = open_store(tmp_path / "store.db")
    inventory = Inventory(conn, oui_path=str(registry))
    inventory.update([dicom_result()])
    later = dicom_result()
    later.first_seen, later.last_seen = 200.0, 250.0
    inventory.update([later])
    assets = {a["ip"]: a for a in inventory.assets()}
    modality = assets["10.1.0.20"]
    assert (modality["first_seen"], modality["last_seen"]) == (100.0, 250.0)
    assert modality["mac"] == "00:0a:0b:00:00:01"
    assert modality["vendor"] == "Baxter International Inc"
    assert set(modality["attributes"]["role"]) == {"modality", "infusion_pump", "iomt_device"}
    assert modality["attributes"]["ae_title"] == ["CT01"]
    assert inventory.roles("10.1.0.5") == {"pacs"}
    rows = conn.execute("SELECT COUNT(*) FROM asset_attributes WHERE ip = '10.1.0.20' AND kind = 'ae_title'").fetchone()
    assert rows[0] == 1


def test_inventory_from_hl7_capture(shared_pcaps, tmp_path):
    inventory = Inventory(open_store(tmp_path / "store.db"))
    inventory.update(iter_inspections(str(shared_pcaps / "ndpi-hl7.pcap")))
    assets = {a["ip"]: a for a in inventory.assets()}
    # MANIFEST: one HL7 flow 10.0.0.155:49242 -> 10.0.0.126:6661
    assert assets["10.0.0.126"]["attributes"]["role"] == ["hl7_engine"]
    assert assets["10.0.0.126"]["attributes"]["service"] == ["hl7/tcp/6661"]
    assert assets["10.0.0.126"]["attributes"]["hl7_application"] == ["RECEIVING_APPLICATION^RECEIVING_FACILITY"]
    assert assets["10.0.0.155"]["attributes"]["hl7_application"] == ["SENDING_APPLICATION^SENDING_FACILITY"]
    assert assets["10.0.0.155"]["attributes"]["role"] == ["ehr"]  # it sends ADT^A01


def test_assets_command_lists_inventory(shared_pcaps, tmp_path):
    store = tmp_path / "store.db"
    runner = CliRunner()
    result = runner.invoke(main, ["assets", "--store", str(store), "--pcap", str(shared_pcaps / "sv-telnet.pcap"), "--json"])
    assert result.exit_code == 0, result.output
    assets = {a["ip"]: a for a in json.loads(result.output)}
    assert assets["192.168.0.1"]["attributes"]["service"] == ["telnet/tcp/23"]
    assert assets["192.168.0.1"]["attributes"]["banner"] == ["telnet: OpenBSD/i386 (oof) (ttyp2)"]
    again = runner.invoke(main, ["assets", "--store", str(store)])
    assert again.exit_code == 0
    assert "192.168.0.1" in again.output


def test_assets_command_rejects_bad_policy(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[[assets]]\nip = '10.0.0.1'\nrole = 'toaster'\n")
    result = CliRunner().invoke(main, ["assets", "--store", str(tmp_path / "s.db"), "--policy", str(policy)])
    assert result.exit_code == 2
    assert "toaster" in result.output


def test_assets_command_reports_bad_capture(tmp_path):
    capture = tmp_path / "not-a-capture.pcap"
    capture.write_bytes(b"plain text, not a capture")
    result = CliRunner().invoke(main, ["assets", "--store", str(tmp_path / "s.db"), "--pcap", str(capture)])
    assert result.exit_code == 1
    assert "cannot read capture" in result.output
