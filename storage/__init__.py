"""Storage: settings, the DuckDB catalog and the on-disk stores it indexes."""
from storage.catalog import Catalog, CatalogBusyError, CatalogError, CatalogWriteError, open_catalog
from storage.features import DamagedFeatureFile, FeatureKey, FeatureStore, FeatureStoreError
from storage.settings import Settings, get_settings, resolve_device

__all__ = ["Catalog", "CatalogBusyError", "CatalogError", "CatalogWriteError", "open_catalog", "DamagedFeatureFile",
           "FeatureKey", "FeatureStore", "FeatureStoreError", "Settings", "get_settings", "resolve_device"]
