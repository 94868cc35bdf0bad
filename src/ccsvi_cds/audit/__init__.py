"""Batch audit: find every referral for CCSVI angioplasty in FHIR exports, with the live service's rules."""
