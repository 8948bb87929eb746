/* Force-included (gcc -include) when building pyslurm 25.11 against Slurm 26.05 headers. */
#define SLURM_BACKWARD_COMPAT 1                 /* 26.05: job-id wrappers for step-id calls */
#include <slurm/slurm.h>
#define ESLURM_ERROR_ON_DESC_TO_RECORD_COPY (-1) /* errno removed in 26.05; never returned */
#define slurm_free_ctl_conf slurm_free_conf     /* renamed in 26.05 */
