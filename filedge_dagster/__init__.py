"""filedge's Dagster code location. It uses only ``filedge_core``'s public API."""
