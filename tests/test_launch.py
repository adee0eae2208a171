import pytest

from trainbench import launch


@pytest.mark.parametrize("nodelist, host", [
    ("node7", "node7"), ("gpu[003-005,9]", "gpu003"), ("gpu[12,14]", "gpu12"),
    ("a100-[01-04],h100-01", "a100-01"),
])
def test_first_host(nodelist, host):
    assert launch.first_host(nodelist) == host


def test_torch_env_from_slurm_task():
    env = {"SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
           "SLURM_NTASKS_PER_NODE": "8(x2)", "SLURM_JOB_NODELIST": "gpu[003-004]"}
    assert launch.torch_env_from_slurm(env) == {
        "RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "gpu003", "MASTER_PORT": launch.DEFAULT_MASTER_PORT}


def test_torchrun_or_single_task_is_left_alone():
    assert launch.torch_env_from_slurm({"SLURM_NTASKS": "8", "RANK": "0"}) == {}
    assert launch.torch_env_from_slurm({"SLURM_NTASKS": "1"}) == {}
    assert launch.torch_env_from_slurm({}) == {}
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        launch.torch_env_from_slurm({"SLURM_NTASKS": "2", "SLURM_PROCID": "0"})


def test_apply_sets_the_variables():
    env = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_JOB_NODELIST": "n1"}
    assert launch.apply_slurm_env(env)["RANK"] == "1"
    assert env["WORLD_SIZE"] == "2" and env["MASTER_ADDR"] == "n1"
