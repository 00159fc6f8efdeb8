"""The store's contract on PostgreSQL: test_store's, test_control's and test_workflow's store tests
(and the CLI tests among them), their tests of control across worker processes (cancel, queue
pause and limits, schedules firing once), the dashboard's API, the Python API and stats, run again on a real server (see tests/pg.py; they skip
where it cannot run)."""

from tests import test_worker
from tests import test_control, test_dashboard, test_newcomers, test_stats, test_store, test_workflow
from tests.pg import postgres_cases

postgres_cases(
    globals(),
    test_store.EnqueueTest, test_store.ClaimTest, test_store.RecoveryTest, test_store.RunHistoryTest,
    test_store.UserActionTest, test_store.WakeUpTest, test_store.ConcurrentClaimTest,
    test_workflow.DependencyTest, test_workflow.UniqueKeyTest, test_workflow.ScheduleStoreTest,
    test_workflow.ScheduleCliTest, test_control.CancelStoreTest, test_control.RetryEditStoreTest,
    test_control.QueueStoreTest, test_control.RetentionStoreTest, test_control.CancelWorkerTest,
    test_control.QueueWorkerTest, test_dashboard.ApiTest, test_dashboard.ActionTest, test_dashboard.WorkflowApiTest,
    test_newcomers.PythonApiTest, test_newcomers.DlqRetryResetsTest, test_stats.StatsCommandTest,
    test_worker.HeldLeaseTest,
    sqlite_only=("ConcurrentClaimTest.test_two_processes_never_claim_the_same_job_without_returning",
                 "DependencyTest.test_the_schema_is_current", "DependencyTest.test_waiting_jobs_stay_out_of_the_claims_index"),
)
