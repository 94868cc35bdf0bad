"""Rule authoring: lint, test cases, docs, diff and hot reload for the rule pack (`ccsvi-cds rules ...`)."""
