# Upgrading a running installation: the database is deployed at release
# @v2.0.0 and the whole stack (nginx, a real agent, a scripted one) runs
# jobs on it; jobs are left in flight (one voting, one running), the plan
# is deployed on top (sqitch deploy --verify), and those jobs finish and
# new ones run.  Then the changes after the tag are reverted and deployed
# again, and the readable definitions in sql/ are checked to give the same
# catalog as the deployed plan.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use MIME::Base64 ();
use POSIX ();
use Test::More;
use PushJobs::Stack;
use PushJobs::Engine;

my $stack = PushJobs::Stack->new(agents => 1, workers => 2,
    deploy_to => '@v2.0.0',
    nginx_extra => 'pushjobs_voting_timeout 60s; '
                   . 'pushjobs_sweep_interval 500ms; '
                   . 'pushjobs_ping_interval 60s;');
$stack->start;
PushJobs::Engine->init($stack);

sub sql { my $out = $stack->psql('pushjobs', $_[0]); chomp $out; $out }

my $after_tag = sql("SELECT to_regprocedure('pushjobs.job_active(pushjobs.job_status)') IS NULL");
is $after_tag, 't', 'deployed at @v2.0.0: no change after the tag';

# --- jobs in flight at the release -----------------------------------------

my $g = PushJobs::Engine::peer('ghost');

# running: node1 (a real agent) runs it to the end, ghost is running
my $running = $stack->start_job({ command => 'true',
                                  nodes => [ 'ghost', 'node1' ] });
PushJobs::Engine::expect($g, 'commit', $running) or die 'no commit';
PushJobs::Engine::say_($g, 'ack_commit', $running);
PushJobs::Engine::expect($g, 'run', $running) or die 'no run';
PushJobs::Engine::say_($g, 'ack_run', $running);
is_deeply PushJobs::Engine::wait_nodes($running,
                                       { running => ['ghost'],
                                         succeeded => ['node1'] }),
    { running => ['ghost'], succeeded => ['node1'] },
    'a job running at the release';

# voting: ghost has not answered the commit
my $voting = $stack->start_job({ command => 'true', nodes => ['ghost'] });
PushJobs::Engine::expect($g, 'commit', $voting) or die 'no commit';
is $stack->job($voting)->{status}, 'voting', 'a job voting at the release';

# --- the upgrade ----------------------------------------------------------
# ... while a front end's transaction holds job_nodes and then asks for
# jobs, as node_inputs() does: a change that locks both (rollout) must not
# take one and wait for the other (a deadlock, which failed the deploy or
# the front end's batch)

my $busy = $stack->hold('UPDATE pushjobs.job_nodes SET updated_at = '
                        . 'updated_at WHERE false;');
my $deploy = fork // die "fork: $!";
if (!$deploy) {
    my $ok = eval { $stack->sqitch('deploy', '--verify'); 1 };
    POSIX::_exit($ok ? 0 : 1);
}
ok PushJobs::Stack::wait_for(60, sub {
    sql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = "
        . "l.relation WHERE c.relname = 'job_nodes' AND NOT l.granted "
        . "AND l.mode = 'ShareRowExclusiveLock'") > 0
}, 0.05), 'the deploy waits for job_nodes';
print $busy "UPDATE pushjobs.jobs SET updated_at = updated_at WHERE false;\n";
ok $stack->release($busy), '  the front end\'s transaction, which then '
    . 'locked jobs, commits';
waitpid $deploy, 0;
is $?, 0, '  and so does the deploy';
is sql("SELECT to_regprocedure('pushjobs.job_active(pushjobs.job_status)') IS NOT NULL"),
    't', 'upgraded: the changes after the tag are deployed and verified';

PushJobs::Engine::say_($g, 'succeeded', $running, exit_status => 0);
is $stack->wait_job($running, 20)->{status}, 'complete',
    'the running job completes after the upgrade';

PushJobs::Engine::say_($g, 'ack_commit', $voting);
PushJobs::Engine::expect($g, 'run', $voting) or die 'no run';
PushJobs::Engine::say_($g, 'ack_run', $voting);
PushJobs::Engine::say_($g, 'succeeded', $voting, exit_status => 0);
is $stack->wait_job($voting, 20)->{status}, 'complete',
    'the voting job runs and completes after the upgrade';
is_deeply [ PushJobs::Engine::events($voting) ],
    [ 'start', 'quorum_vote ghost success', 'quorum_succeeded', 'run_start ghost',
      'run_complete ghost success', 'job_complete complete' ],
    '  its events';

my $new = $stack->start_job({ command => 'true', nodes => ['node1'] });
is $stack->wait_job($new, 30)->{status}, 'complete', 'a new job completes';

# a short final report (its streamed bytes stored as chunks only): the
# revert makes its output whole again
sub b64 { MIME::Base64::encode_base64($_[0], '') }
my $short = $stack->start_job({ command => 'true', nodes => ['ghost'],
                                capture_output => JSON::PP::true });
PushJobs::Engine::expect($g, 'commit', $short) or die 'no commit';
PushJobs::Engine::say_($g, 'ack_commit', $short);
PushJobs::Engine::expect($g, 'run', $short) or die 'no run';
PushJobs::Engine::say_($g, 'ack_run', $short);
PushJobs::Engine::say_($g, 'output', $short, stream => 'stdout', offset => 0,
                       data => b64("streamed\n"));
PushJobs::Stack::wait_for(10, sub {
    sql("SELECT count(*) FROM pushjobs.job_output_chunk"
        . " WHERE job_id = '$short'") == 1
}, 0.1) or die 'no chunk';
PushJobs::Engine::say_($g, 'succeeded', $short, exit_status => 0,
                       stdout_offset => 9, stdout => b64("tail\n"),
                       stderr => '');
is $stack->wait_job($short, 30)->{status}, 'complete',
    'a job with a short final report completes';
is sql("SELECT stdout_at FROM pushjobs.job_output WHERE job_id = '$short'"),
    9, '  its stored report starts after the streamed bytes';

# --- revert to the tag and deploy again ------------------------------------

$stack->sqitch('revert', '-y', '--to', '@v2.0.0');
is sql("SELECT to_regprocedure('pushjobs.job_active(pushjobs.job_status)') IS NULL"),
    't', 'reverted to @v2.0.0';
is sql("SELECT stdout = convert_to(E'streamed\\ntail\\n', 'UTF8')"
       . " FROM pushjobs.job_output WHERE job_id = '$short'"), 't',
    '  the short report\'s output whole again (the chunks before it)';
$stack->sqitch('deploy', '--verify');
is sql("SELECT count(*) FROM sqitch.changes WHERE project = 'pushjobs'"),
    scalar(grep { /^[a-z_]+ / } split /\n/,
           PushJobs::Stack::slurp("$PushJobs::Stack::ROOT/migrations/sqitch.plan")),
    'deployed again: every change of the plan';

$new = $stack->start_job({ command => 'true', nodes => ['node1'] });
is $stack->wait_job($new, 30)->{status}, 'complete',
    'a new job completes after the revert and deploy';

# --- sql/ has what the plan deploys ----------------------------------------

my $catalog = <<'EOF';
SELECT kind || ' ' || name || ' ' || def FROM (
    SELECT 'function' AS kind, p.oid::regprocedure::text AS name,
           pg_get_functiondef(p.oid) AS def
      FROM pg_proc p WHERE p.pronamespace = 'pushjobs'::regnamespace
    UNION ALL
    -- a column's place among the live ones: a revert that drops a column
    -- and a deploy that adds it again leave a dropped one behind
    SELECT 'column', c.relname || '.'
                     || lpad((row_number() OVER (PARTITION BY a.attrelid
                                                 ORDER BY a.attnum))::text,
                             2, '0') || '.'
                     || a.attname,
           format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull
           || ' ' || COALESCE(pg_get_expr(d.adbin, d.adrelid), '')
      FROM pg_attribute a
      JOIN pg_class c ON c.oid = a.attrelid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE c.relnamespace = 'pushjobs'::regnamespace AND c.relkind = 'r'
       AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'index', indexname, indexdef
      FROM pg_indexes WHERE schemaname = 'pushjobs'
    UNION ALL
    SELECT 'storage', relname, array_to_string(reloptions, ',')
      FROM pg_class
     WHERE relnamespace = 'pushjobs'::regnamespace AND reloptions IS NOT NULL
    UNION ALL
    SELECT 'constraint', conrelid::regclass || '.' || conname,
           pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = 'pushjobs'::regnamespace
    UNION ALL
    SELECT 'trigger', tgname, pg_get_triggerdef(t.oid)
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
     WHERE c.relnamespace = 'pushjobs'::regnamespace AND NOT t.tgisinternal
    UNION ALL
    SELECT 'sequence', relname, ''
      FROM pg_class
     WHERE relnamespace = 'pushjobs'::regnamespace AND relkind = 'S'
    UNION ALL
    SELECT 'type', t.typname,
           array_to_string(array(SELECT enumlabel FROM pg_enum
                                  WHERE enumtypid = t.oid
                                  ORDER BY enumsortorder), ',')
      FROM pg_type t
     WHERE t.typnamespace = 'pushjobs'::regnamespace AND t.typtype = 'e'
) x ORDER BY 1
EOF

$stack->psql('postgres', 'CREATE DATABASE current OWNER pushjobs');
my $port = $stack->{pg_port};
my $out = qx{psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $port -U pushjobs \\
             -d current -f $PushJobs::Stack::ROOT/sql/schema.sql \\
             -f $PushJobs::Stack::ROOT/sql/functions.sql 2>&1};
is $?, 0, 'sql/schema.sql and sql/functions.sql load' or diag $out;

my @deployed = split /\n/, $stack->psql('pushjobs', $catalog);
my @current = split /\n/, $stack->psql('pushjobs', $catalog, 'current');
ok @deployed > 100, 'the deployed catalog: ' . scalar(@deployed) . ' lines';
is_deeply \@current, \@deployed,
    'sql/ defines the same functions, tables, indexes, triggers as the plan';

done_testing;
