"""DITS influence: probes from θ* (`probe`), metric-after-update estimators (`estimator`, `report`) and
the selection of DPO pairs (`selection`, pure Python). Import the submodules; this package imports nothing."""
