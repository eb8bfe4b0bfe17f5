"""Small helpers shared by covid-d2 modules."""
