"""Studies: a grid of `tta-run` cells on submitit (SLURM, local processes, or inline).

A grid file (`grid.load_grid`) names fixed options and axes; `plan.Plan` expands it into
cells, each named by the hash of its resolved run config (`identity.cell_id`) and kept in
`<sweep>/cells/<id>/`. `driver.drive` submits the cells that are not done, resumes after a
crash of the driver, and runs the `select:` stage (hyperparameters chosen on a validation
stream, never the test stream). `report.write_report` turns the results into a leaderboard
(markdown, CSV) and one self-contained HTML report.

Layout of a cell directory (`state.CellFiles`): config.json, results.json (written by rename,
so it is complete or absent), error.json (a failure's message and traceback), running.json
(heartbeat of the process running it), submitted.json (the job it was given to),
attempts.log (one line per start) and log.txt.
"""
