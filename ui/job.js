/*
 * The job page: …/pushy/jobs/JOBID#token=TOKEN. Reads the job document
 * once per feed connection, then follows the job's event feed; no polling.
 */
'use strict';

(function () {
    var STATUSES = ['new', 'ready', 'running', 'succeeded', 'failed',
                    'crashed', 'timed_out', 'nacked', 'unavailable',
                    'aborted', 'was_ready', 'faulty'];
    var VOTE = { success: 'ready', failure: 'nacked', aborted: 'aborted' };
    var RUN = { success: 'succeeded', failure: 'failed', crashed: 'crashed',
                aborted: 'aborted', run_nacked: 'failed',
                run_nacked_while_running: 'failed',
                client_died_while_running: 'crashed',
                timed_out: 'timed_out', run_timeout: 'timed_out' };
    var MAX_EVENTS = 500;

    var m = /^(.*\/pushy)\/jobs\/([0-9a-f]{32})\/?$/.exec(location.pathname);
    if (!m) {
        PJ.showError('not a job page address');
        return;
    }
    var base = m[1], id = m[2];
    var jobPath = base + '/jobs/' + id;
    var state = { nodes: new Map(), cells: new Map(), counts: {},
                  capture: false, ended: false, selected: null,
                  out: null, transitions: [], requestor: '—', quorum: '—' };
    window.pushjobsPage = { stats: PJ.stats, state: state };

    if (!PJ.token) {
        PJ.showError('this link has no token: ask for a link with '
                     + 'GET ' + jobPath + '/link');
        return;
    }

    var $ = function (i) { return document.getElementById(i); };

    function statusClass(s) {
        return 's-' + (STATUSES.indexOf(s) >= 0 ? s : 'other');
    }

    function setStatus(name, s) {
        var old = state.nodes.get(name);
        if (old === s) {
            return;
        }
        var cell = state.cells.get(name);
        if (!cell) {
            cell = addCell(name);
        }
        if (old !== undefined) {
            state.counts[old]--;
        }
        state.counts[s] = (state.counts[s] || 0) + 1;
        state.nodes.set(name, s);
        cell.className = 'cell ' + statusClass(s);
        cell.title = name + ': ' + s;
        if (state.transitions.length < 100000) {
            state.transitions.push([name, s]);
        }
        legendDirty();
    }

    function addCell(name) {
        var c = PJ.el('div', 'cell');
        c.title = name;
        c.dataset.node = name;
        state.cells.set(name, c);
        $('grid').appendChild(c);
        applyFilter(c);
        $('node-count').textContent = '(' + state.cells.size + ')';
        return c;
    }

    var legendTimer = null;
    function legendDirty() {
        if (legendTimer === null) {
            legendTimer = setTimeout(renderLegend, 100);
        }
    }

    function renderLegend() {
        legendTimer = null;
        var l = $('legend');
        l.textContent = '';
        var keys = STATUSES.concat(Object.keys(state.counts).filter(
            function (k) { return STATUSES.indexOf(k) < 0; }));
        keys.forEach(function (s) {
            var n = state.counts[s] || 0;
            if (!n) {
                return;
            }
            var item = PJ.el('span', 'legend-item');
            item.dataset.status = s;
            item.appendChild(PJ.el('span', 'swatch ' + statusClass(s)));
            item.appendChild(PJ.el('span', 'legend-name', s));
            item.appendChild(PJ.el('span', 'legend-count', n));
            l.appendChild(item);
        });
    }

    function fact(k, v) {
        var div = PJ.el('div', 'fact');
        var dt = PJ.el('dt', null, k), dd = PJ.el('dd', null, v);
        dd.dataset.fact = k;
        div.appendChild(dt);
        div.appendChild(dd);
        $('facts').appendChild(div);
    }

    function setJobStatus(s) {
        var b = $('job-status');
        b.textContent = s;
        b.className = 'badge j-' + String(s).replace(/[^a-z_]/g, '');
    }

    function show(v) {
        return v === undefined || v === null ? '—' : String(v);
    }

    /* the job document: the whole state, at load and on each reconnect */
    function render(job) {
        $('job-id').textContent = id;
        $('command').textContent = job.command;
        document.title = 'Push job: ' + String(job.command).slice(0, 60);
        setJobStatus(job.status);
        $('facts').textContent = '';
        fact('started by', state.requestor);
        fact('created', show(job.created_at));
        fact('updated', show(job.updated_at));
        fact('quorum', state.quorum);
        fact('max_concurrency', show(job.max_concurrency));
        fact('max_errors', show(job.max_errors));
        fact('run_timeout', show(job.run_timeout) + ' s');
        fact('capture_output', job.capture_output ? 'yes' : 'no');
        if (job.user !== undefined) {
            fact('runs as', show(job.user));
        }
        if (job.dir !== undefined) {
            fact('dir', show(job.dir));
        }
        state.capture = !!job.capture_output;
        $('grid').classList.toggle('clickable', state.capture);
        var nodes = job.nodes || {};
        Object.keys(nodes).forEach(function (s) {
            (nodes[s] || []).forEach(function (n) { setStatus(n, s); });
        });
        renderLegend();
        $('error').hidden = true;
        $('main').hidden = false;
    }

    function describe(name, d) {
        var parts = [];
        ['node', 'status', 'command', 'user', 'quorum', 'node_count',
         'failed', 'max_errors', 'not_started', 'stream'].forEach(function (k) {
            if (d[k] !== undefined && typeof d[k] !== 'object') {
                parts.push(k + '=' + d[k]);
            }
        });
        if (name === 'output' && typeof d.data === 'string') {
            parts.push(Math.floor(d.data.length * 3 / 4) + ' bytes');
        }
        return parts.join(' ');
    }

    function logEvent(name, d) {
        var ol = $('events');
        var li = PJ.el('li', 'ev ev-' + name.replace(/[^a-z_]/g, ''));
        li.appendChild(PJ.el('span', 'ev-time', PJ.fmtTime(d.timestamp)));
        li.appendChild(PJ.el('span', 'ev-name', name));
        li.appendChild(PJ.el('span', 'ev-data', describe(name, d)));
        ol.insertBefore(li, ol.firstChild);
        while (ol.childNodes.length > MAX_EVENTS) {
            ol.removeChild(ol.lastChild);
        }
    }

    function onEvent(name, d) {
        if (name !== 'output') {
            logEvent(name, d);
        }
        switch (name) {
        case 'summary':
            render(d);
            state.ended = true;
            break;
        case 'start':
            /* who started it and the quorum: in the start event only (the
             * document's "user" is whom it runs as) */
            state.requestor = show(d.user);
            state.quorum = show(d.quorum) + ' of ' + show(d.node_count);
            $('facts').querySelectorAll('dd').forEach(function (dd) {
                if (dd.dataset.fact === 'started by') {
                    dd.textContent = state.requestor;
                } else if (dd.dataset.fact === 'quorum') {
                    dd.textContent = state.quorum;
                }
            });
            setJobStatus('voting');
            break;
        case 'quorum_vote':
            setStatus(d.node, VOTE[d.status] || 'unavailable');
            break;
        case 'quorum_succeeded':
            setJobStatus('running');
            break;
        case 'run_start':
            setStatus(d.node, 'running');
            break;
        case 'run_complete':
            setStatus(d.node, RUN[d.status] || 'failed');
            break;
        case 'job_complete':
            setJobStatus(d.status);
            state.ended = true;
            break;
        case 'output':
            onOutput(d);
            break;
        }
    }

    /* --- a node's output ------------------------------------------------ */

    function b64bytes(s) {
        var bin = atob(s), a = new Uint8Array(bin.length);
        for (var i = 0; i < bin.length; i++) {
            a[i] = bin.charCodeAt(i);
        }
        return a;
    }

    function appendOut(stream, bytes, offset) {
        var o = state.out;
        var st = o[stream];
        if (st.pending) {
            st.queue.push([bytes, offset]);
            return;
        }
        if (offset + bytes.length <= st.have) {
            return;                     /* already shown */
        }
        if (offset > st.have) {
            return;                     /* a gap: the next re-sync fills it */
        }
        var part = bytes.subarray(st.have - offset);
        st.have += part.length;
        $('out-' + stream).appendChild(document.createTextNode(
            st.dec.decode(part, { stream: true })));
    }

    function onOutput(d) {
        if (!state.out || d.node !== state.selected
            || (d.stream !== 'stdout' && d.stream !== 'stderr'))
        {
            return;
        }
        appendOut(d.stream, b64bytes(d.data), d.offset | 0);
    }

    function select(name) {
        state.selected = name;
        state.out = {};
        $('output-node').textContent = name;
        $('output-panel').hidden = false;
        ['stdout', 'stderr'].forEach(function (s) {
            var st = { have: 0, pending: true, queue: [],
                       dec: new TextDecoder('utf-8') };
            state.out[s] = st;
            $('out-' + s).textContent = '';
            var out = state.out;
            PJ.get(jobPath + '/output/' + encodeURIComponent(name) + '/' + s,
                   'application/octet-stream')
            .then(function (r) { return r.arrayBuffer(); })
            .then(function (buf) {
                return new Uint8Array(buf);
            }, function (err) {
                if (err.status !== 404) {
                    $('out-' + s).textContent = '(' + err.message + ')';
                }
                return new Uint8Array(0);
            })
            .then(function (bytes) {
                if (state.out !== out) {
                    return;             /* another node was chosen since */
                }
                st.pending = false;
                appendOut(s, bytes, 0);
                st.queue.forEach(function (q) { appendOut(s, q[0], q[1]); });
                st.queue = [];
            });
        });
    }

    function wire() {
        $('grid').addEventListener('click', function (e) {
            var n = e.target.dataset && e.target.dataset.node;
            if (n !== undefined && state.capture) {
                select(n);
            }
        });
        $('output-close').addEventListener('click', function () {
            state.selected = null;
            state.out = null;
            $('output-panel').hidden = true;
        });
        $('filter').addEventListener('input', function () {
            state.cells.forEach(applyFilter);
        });
    }

    function applyFilter(c) {
        var f = $('filter').value;
        c.hidden = f !== '' && c.dataset.node.indexOf(f) < 0;
    }

    function fail(err) {
        PJ.showError('This link cannot show the job: '
                     + (err && err.message ? err.message : String(err)));
    }

    wire();
    PJ.feed(base + '/job_status_feed/' + id, {
        onOpen: function () {
            /* the first load and each reconnect: the whole state again */
            return PJ.getJSON(jobPath).then(function (job) {
                render(job);
            });
        },
        onEvent: onEvent,
        done: function () { return state.ended; },
        onError: fail
    });
})();
