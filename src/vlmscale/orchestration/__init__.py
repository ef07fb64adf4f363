"""Running the grid: job submission, tracking, the plan and status of a grid."""
