# generate.cmake — man pages and bash completion from the binaries themselves, at build time.
#
#   cmake -DJOBVISOR=... [-DJOBVISOR_CP=...] -DSETTINGS_TOOL=... -DJOBS_DIR=... -DVERSION=...
#         -DDOCDIR=... -DCOMPLETION_IN=... -DOUT=... -P generate.cmake
#
# jobvisor(1) is `jobvisor --help` plus `jobvisor COMMAND --help` for every command that
# listing names; jobvisor-cp(1) is `jobvisor-cp --help`; jobvisor.conf(5) is the settings
# table config.c validates with (printed by SETTINGS_TOOL); the completion takes its
# commands and options from the same help texts and its job types from JOBS_DIR. Nothing is
# written by hand twice, so the pages cannot drift from --help (tests/e2e/test_install.py
# compares them with the installed binaries' output).

function(run_help out)
  execute_process(COMMAND ${ARGN} OUTPUT_VARIABLE o ERROR_VARIABLE e RESULT_VARIABLE rc)
  string(STRIP "${o}${e}" text)
  if(text STREQUAL "")
    message(FATAL_ERROR "'${ARGN}' printed nothing (exit ${rc})")
  endif()
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

# Text for roff: backslashes escaped, lines starting with . or ' protected.
function(roff_escape out text)
  string(REPLACE "\\" "\\e" text "${text}")
  string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" text "${text}")
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

function(verbatim out text)
  roff_escape(t "${text}")
  set(${out} ".nf\n${t}\n.fi\n" PARENT_SCOPE)
endfunction()

# Options (--name) named in a help text, sorted, unique.
function(options_in out text)
  string(REGEX MATCHALL "--[a-z][a-z0-9-]*" opts "${text}")
  list(APPEND opts --help)
  list(REMOVE_DUPLICATES opts)
  list(SORT opts)
  string(REPLACE ";" " " opts "${opts}")
  set(${out} "${opts}" PARENT_SCOPE)
endfunction()

file(MAKE_DIRECTORY ${OUT})
set(date_line "\"jobvisor ${VERSION}\" \"jobvisor manual\"")

# ---- jobvisor(1) ----
run_help(top ${JOBVISOR} --help)
string(REGEX MATCHALL "\n  [a-z][a-z-]*" cmd_lines "\n${top}")
set(commands "")
foreach(l IN LISTS cmd_lines)
  string(STRIP "${l}" c)
  list(APPEND commands ${c})
endforeach()
if(NOT commands)
  message(FATAL_ERROR "no commands found in 'jobvisor --help':\n${top}")
endif()
verbatim(synopsis "${top}")
set(page ".TH JOBVISOR 1 \"\" ${date_line}
.SH NAME
jobvisor \\- host agent for game\\-server hosting: runs jobs from a control plane in Lua, supervises game servers
.SH SYNOPSIS
${synopsis}.SH DESCRIPTION
One agent runs on each game host. It polls a control plane over HTTP for jobs, runs every
job in a sandboxed Lua job script, reports progress and results, and supervises the game
servers it starts. Each command below is shown with its own \\fB\\-\\-help\\fR text.
.SH COMMANDS
")
set(completion_cases "")
foreach(c IN LISTS commands)
  if(c STREQUAL "version" OR c STREQUAL "help")
    run_help(h ${JOBVISOR} ${c})
    set(opts "")
  else()
    run_help(h ${JOBVISOR} ${c} --help)
    options_in(opts "${h}")
  endif()
  verbatim(v "${h}")
  string(APPEND page ".SS ${c}\n${v}")
  string(APPEND completion_cases "\t\t${c}) opts=\"${opts}\" ;;\n")
endforeach()
string(APPEND page ".SH EXIT STATUS
0 success (for \\fBrun\\fR: COMPLETED; for \\fBhealth\\fR: healthy), 1 failure (FAILED,
unhealthy), 2 usage or configuration error, 3 the job was CANCELLED (\\fBrun\\fR).
.SH ENVIRONMENT
Every agent setting has a \\fBJOBVISOR_\\fR variable that overrides the file; see
\\fBjobvisor.conf\\fR(5).
.SH FILES
.TP
.I /etc/jobvisor/agent.conf
the agent's settings (\\fBjobvisor.conf\\fR(5)), given with \\fB\\-\\-config\\fR
.TP
.I /var/lib/jobvisor
the default data dir: instances, the run spool, caches, \\fIagent\\-state.json\\fR
.SH SEE ALSO
\\fBjobvisor.conf\\fR(5), \\fBjobvisor\\-cp\\fR(1), ${DOCDIR}/operations.md, lua\\-api.md, jobs.md, protocol.md
")
file(WRITE ${OUT}/jobvisor.1 "${page}")

# ---- jobvisor-cp(1) ----
if(JOBVISOR_CP)
  run_help(cph ${JOBVISOR_CP} --help)
  verbatim(v "${cph}")
  options_in(cp_opts "${cph}")
  file(WRITE ${OUT}/jobvisor-cp.1 ".TH JOBVISOR-CP 1 \"\" ${date_line}
.SH NAME
jobvisor\\-cp \\- the reference jobvisor control plane (HTTP API, WebSocket UI, SQLite)
.SH SYNOPSIS
${v}.SH DESCRIPTION
Agents poll it for jobs and report progress and results; panels and the web UI create,
cancel and retry jobs through its API and watch them over a WebSocket. The protocol is in
${DOCDIR}/protocol.md.
.SH SEE ALSO
\\fBjobvisor\\fR(1), \\fBjobvisor.conf\\fR(5)
")
else()
  set(cp_opts "")
endif()

# ---- jobvisor.conf(5) ----
execute_process(COMMAND ${SETTINGS_TOOL} OUTPUT_VARIABLE table RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR table STREQUAL "")
  message(FATAL_ERROR "${SETTINGS_TOOL} failed (${rc})")
endif()
set(conf ".TH JOBVISOR.CONF 5 \"\" ${date_line}
.SH NAME
jobvisor.conf \\- settings of the jobvisor agent
.SH SYNOPSIS
.B jobvisor agent \\-\\-config
.I /etc/jobvisor/agent.conf
.SH DESCRIPTION
\\fBkey = value\\fR lines. Blank lines and lines starting with \\fB#\\fR are ignored,
whitespace around key and value is dropped, and a value may be wrapped in double quotes (taken
literally). An unknown key, a key given twice or a line without \\fB=\\fR is an error naming
the file and line. Every setting can also be given as an environment variable, which overrides
the file; with only the environment set, the agent runs without a file. Durations take
\\fB500ms\\fR, \\fB3s\\fR, \\fB2m\\fR, \\fB1h\\fR or plain seconds; sizes take \\fBK\\fR,
\\fBM\\fR, \\fBG\\fR suffixes.
.SH SETTINGS
")
# CMake lists split at ';' (and not inside [...]): park those characters while splitting.
string(REPLACE ";" "@SEMI@" table "${table}")
string(REPLACE "[" "@LB@" table "${table}")
string(REPLACE "]" "@RB@" table "${table}")
string(REPLACE "\n" ";" rows "${table}")
foreach(row IN LISTS rows)
  if(row STREQUAL "")
    continue()
  endif()
  string(REPLACE "\t" ";" f "${row}")
  list(GET f 0 key)
  list(GET f 1 env)
  list(GET f 2 def)
  list(GET f 3 help)
  foreach(v key env def help)
    string(REPLACE "@SEMI@" ";" ${v} "${${v}}")
    string(REPLACE "@LB@" "[" ${v} "${${v}}")
    string(REPLACE "@RB@" "]" ${v} "${${v}}")
  endforeach()
  roff_escape(help "${help}")
  roff_escape(def "${def}")
  if(def STREQUAL "-")
    set(def "(none)")
  endif()
  string(REPLACE "-" "\\-" help "${help}")
  string(APPEND conf ".TP\n.BR ${key} \" (\" ${env} \")\"\ndefault: ${def}\n.br\n${help}\n")
endforeach()
string(APPEND conf ".SH SIGNALS
SIGTERM or SIGINT drains (no new work, running jobs may finish for \\fBdrain_timeout\\fR, then
are cancelled); SIGQUIT, or the signal again 2 s or more later, cancels at once; SIGHUP reloads
this file. See ${DOCDIR}/operations.md.
.SH SEE ALSO
\\fBjobvisor\\fR(1), ${DOCDIR}/operations.md
")
file(WRITE ${OUT}/jobvisor.5.tmp "${conf}")
file(RENAME ${OUT}/jobvisor.5.tmp ${OUT}/jobvisor.conf.5)

# ---- bash completion ----
file(GLOB job_scripts ${JOBS_DIR}/*.lua)
set(types "")
foreach(s IN LISTS job_scripts)
  get_filename_component(n ${s} NAME_WE)
  string(TOUPPER ${n} n)
  list(APPEND types ${n})
endforeach()
list(SORT types)
string(REPLACE ";" " " types "${types}")
string(REPLACE ";" " " commands_text "${commands}")
set(JV_COMMANDS "${commands_text}")
set(JV_COMMAND_CASES "${completion_cases}")
set(JV_JOB_TYPES "${types}")
set(JV_CP_OPTIONS "${cp_opts}")
configure_file(${COMPLETION_IN} ${OUT}/jobvisor.bash @ONLY)
