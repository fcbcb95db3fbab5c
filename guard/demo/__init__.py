"""``nodeguard demo``: a Kubernetes-like node, an attacker and a client in throwaway network
namespaces; three floods against the node protected by the default policy, shown live."""
