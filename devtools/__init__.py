"""Tools for tests, benches and scripts: simulated sites and recordings from the Borneo data. Not
installed, not imported by edgemon or training."""
