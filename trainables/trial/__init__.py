"""One trial: the driver that runs it, its sessions, the train loop, checkpoints, schedule,
optimiser, precision, metrics, class weights and its plan (a search trial or a refit).
"""
