"""The operator's flows: admission (reserve on delete and eviction), the safety net, the release
loop, and the informer handlers that feed them. They decide with `decisions` and act through `kube`."""
