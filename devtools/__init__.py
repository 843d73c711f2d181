"""Tools for tests, benches and scripts: simulated sites and recordings from the Borneo data,
soundscapes and a virtual audio device, synthetic recorder databases, a throwaway PostgreSQL
server and a slow link. Not installed, not imported by edgemon or training; imports nothing from
tests/ (tests/test_layout.py checks that bench/, scripts/ and devtools/ do not)."""
