# --- sbatch script: stable ---
#!/bin/bash
#SBATCH --job-name=sweep-debug-stable
#SBATCH --array=0,3,6%2
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --gres=gpu:2
#SBATCH --time=24:00:00
#SBATCH --output=/srv/sweeps/debug/slurm/%x-%A_%a.out
#SBATCH --signal=B:USR1@300
#SBATCH --partition=gpu

# one trial of sweep debug per array task: `pretrain train` with 2 local rank(s); rerunning
# the array (or `pretrain sweep`) skips finished trials and resumes killed ones from their checkpoints
cd {CWD}
exec {PYTHON} -m launch.sweep_cli /srv/sweeps/debug/sweep.yaml --trial "$SLURM_ARRAY_TASK_ID"

# --- sbatch script: forks ---
#!/bin/bash
#SBATCH --job-name=sweep-debug-forks
#SBATCH --array=1-2,4-5,7-8%2
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --gres=gpu:2
#SBATCH --time=24:00:00
#SBATCH --output=/srv/sweeps/debug/slurm/%x-%A_%a.out
#SBATCH --signal=B:USR1@300
#SBATCH --partition=gpu
#SBATCH --dependency=afterok:{STABLE_JOB_ID}

# one trial of sweep debug per array task: `pretrain train` with 2 local rank(s); rerunning
# the array (or `pretrain sweep`) skips finished trials and resumes killed ones from their checkpoints
cd {CWD}
exec {PYTHON} -m launch.sweep_cli /srv/sweeps/debug/sweep.yaml --trial "$SLURM_ARRAY_TASK_ID"

