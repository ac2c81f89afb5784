"""Offline bundles: models carried on a disk to an air-gapped site, verifiable and signable.

One uncompressed tar: manifest.json, manifest.sig (when signed), then the GGUF files in
manifest order. See docs/bundles.md for the format and the workflow.
"""

from .exporter import ExportPlan, export_to_file, plan_export, write_export
from .importer import ImportResult, import_bundle
from .manifest import FORMAT_VERSION, Manifest, parse_manifest
from .signing import fingerprint, generate_keypair, load_private_key, load_public_key
from .tarstream import BundleReader, verify_stream

__all__ = [
    "FORMAT_VERSION",
    "BundleReader",
    "ExportPlan",
    "ImportResult",
    "Manifest",
    "export_to_file",
    "fingerprint",
    "generate_keypair",
    "import_bundle",
    "load_private_key",
    "load_public_key",
    "parse_manifest",
    "plan_export",
    "verify_stream",
    "write_export",
]
