"""Benchmarks against a real kube-apiserver + etcd (see benchmarks/README.md)."""
