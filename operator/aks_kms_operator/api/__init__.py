"""The ClusterEncryptionPolicy API: typed model (v1alpha1), schema machinery, CRD rendering."""
