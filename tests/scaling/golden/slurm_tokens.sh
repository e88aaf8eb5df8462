# --- sbatch script: trials ---
#!/bin/bash
#SBATCH --job-name=sweep-debug-trials
#SBATCH --array=0-5
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=24:00:00
#SBATCH --output=/srv/sweeps/debug/slurm/%x-%A_%a.out
#SBATCH --signal=B:USR1@300

# one trial of sweep debug per array task: `pretrain train` with 1 local rank(s); rerunning
# the array (or `pretrain sweep`) skips finished trials and resumes killed ones from their checkpoints
cd {CWD}
exec {PYTHON} -m launch.sweep_cli /srv/sweeps/debug/sweep.yaml --trial "$SLURM_ARRAY_TASK_ID"

