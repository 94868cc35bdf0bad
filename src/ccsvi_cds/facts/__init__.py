"""From FHIR resources to the small flat facts the engine matches on."""
