"""Rule test cases (rules/*.cases.yaml): the runner behind `cartox rules test` and the pytest plugin.

It sits above the pipeline (it evaluates real FHIR Bundles), so it lives outside the clinical core:
`service.rules_engine` never imports it.
"""
