"""Importers of real trip records (NYC TLC, Chicago) into the canonical trip store.

``import_files`` is the entry point; each source module maps one public layout family to canonical rows.
"""

from cityml.data.importers.batch import IMPORTERS, import_files
from cityml.data.importers.common import TripFileError
from cityml.data.validation import TripSchemaError

__all__ = ["IMPORTERS", "TripFileError", "TripSchemaError", "import_files"]
