# Delivery targets; included by the top-level Makefile (`include hack/delivery.mk`).
# Uses the top-level Makefile's virtualenv ($(BIN), $(STAMP)).
DPY := $(BIN)/python

.PHONY: manifests check-manifests helm-lint e2e delivery-test

## Re-render manifests/install.yaml and the chart's copied files (CRD, rules, dashboard).
manifests: $(STAMP)
	$(DPY) hack/manifests.py

## Fail if install.yaml or a chart copy is stale; validate every rendering against Kubernetes schemas.
check-manifests: $(STAMP)
	$(DPY) hack/manifests.py --check
	$(DPY) hack/validate_manifests.py

## Lint the chart with Helm's own engine (helm-python-sdk), strict.
helm-lint: $(STAMP)
	$(DPY) -c "import json, sys; sys.path.insert(0, 'hack'); import delivery_tools as t; \
	r = t.lint_chart(); print(json.dumps(r, indent=2)); \
	sys.exit(1 if r['errors'] or any(m['severity'] >= 2 for m in r['messages']) else 0)"

## Delivery tests (manifests, chart, dashboard/alerts, Dockerfile) and the certificate tests.
delivery-test: $(STAMP)
	$(DPY) -m pytest -q tests/delivery tests/unit/test_certs.py

## End-to-end on kind with Calico (needs Docker, kind, kubectl, helm; skipped otherwise).
e2e: $(STAMP)
	$(DPY) -m pytest -v -rs -m e2e tests/e2e
