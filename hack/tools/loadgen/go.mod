module aks-kms-operator/hack/tools/loadgen

go 1.25.0
